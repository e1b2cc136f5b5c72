"""The micro model: a character tokenizer over one sentence, a config small enough to print,
selectable by name wherever --model is (pretrain.py learns its sentence; generate.py decodes it)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import GPTModel, get_config, manual_seed
from tinygrad_gpt.cli import pretrain
from tinygrad_gpt.char_tokenizer import MICRO_SENTENCE, CharTokenizer, micro_text, micro_tokenizer
from tinygrad_gpt.model import CONFIGS
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer, tokenizer_for

from test_checkpoint import isolated

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        yield


def test_the_micro_tokenizer_is_one_token_per_character_of_the_sentence():
    tok = micro_tokenizer()
    assert tok.alphabet == " .Eadefmnorstuvwy" and tok.n_vocab == 17
    ids = tok.encode(MICRO_SENTENCE)
    assert len(ids) == len(MICRO_SENTENCE) == 30
    assert ids[:5] == [2, 14, 5, 10, 16]                 # E v e r y
    assert tok.decode(ids) == MICRO_SENTENCE
    assert tok.decode_single_token_bytes(2) == b"E"


def test_a_character_outside_the_alphabet_is_named_with_its_position():
    with pytest.raises(ValueError, match=r"character 'x' at position 4 is not in the micro tokenizer's 17"):
        micro_tokenizer().encode("Eve xylophone")
    with pytest.raises(ValueError, match="token id 17 is outside"):
        micro_tokenizer().decode([0, 17])
    with pytest.raises(ValueError, match="repeats a character"):
        CharTokenizer("aab")


def test_the_micro_config_is_small_enough_to_print():
    cfg = get_config("micro")
    assert (cfg["vocab_size"], cfg["context_length"], cfg["emb_dim"], cfg["n_heads"], cfg["n_layers"]) == (17, 8, 8, 2, 1)
    assert cfg["drop_rate"] == 0.0 and cfg["tokenizer"] == "char"
    manual_seed(0)
    model = GPTModel(cfg)
    assert model.num_parameters() == 1200
    assert max(p.size for p in model.parameters()) == 8 * 32       # the feed-forward's weights
    assert get_config("micro") is not CONFIGS["micro"]


def test_tokenizer_for_reads_the_config():
    assert tokenizer_for(get_config("micro")).alphabet == micro_tokenizer().alphabet
    assert tokenizer_for(get_config("tiny")) is get_gpt2_tokenizer()
    cfg = {k: v for k, v in get_config("124M").items()}
    assert "tokenizer" not in cfg and tokenizer_for(cfg) is get_gpt2_tokenizer()   # absent: GPT-2's
    with pytest.raises(ValueError, match="vocab_size 50257 is not the char tokenizer's 17"):
        tokenizer_for({**cfg, "tokenizer": "char"})
    with pytest.raises(ValueError, match="unknown tokenizer 'bytes'"):
        tokenizer_for({**cfg, "tokenizer": "bytes"})


def test_micro_windows_see_the_sentence_at_every_position():
    """The text repeats with period 31, prime to the context 8: windows every 8 characters
    start at every position of the sentence, so the model cannot learn the sentence by its
    alignment (with period 32 it saw only 4 distinct windows, and generation failed)."""
    text = micro_text()
    starts = {s % 31 for s in range(0, len(text) - 8, 8)}
    assert len(starts) == 31


def test_pretrain_learns_the_micro_sentence(isolated_runtime, capsys):
    code = pretrain.main(["--model", "micro", "--epochs", "30", "--lr", "1e-2", "--batch-size", "4",
                          "--no-plot", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Using the micro model's sentence 'Every effort moves you onward.', 10 times (309 characters)" in out
    losses = [float(line.split("Train loss ")[1].split(",")[0]) for line in out.splitlines() if line.startswith("Ep ")]
    assert losses[0] > 2.5 and losses[-1] < 0.5, losses            # ln 17 = 2.83 at the start
    samples = [line for line in out.splitlines() if line.startswith("Every effort moves you")]
    assert samples[-1].startswith("Every effort moves you onward. Every effort"), samples[-1]


def test_pretrain_micro_refuses_a_text_with_other_characters(isolated_runtime, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("Every effort moves you, quickly.\n" * 20, encoding="utf-8")
    code = pretrain.main(["--model", "micro", "--data", str(tmp_path / "t.txt"), "--no-plot"])
    err = capsys.readouterr().err
    assert code == 2
    assert "character ',' at position 22 is not in the micro tokenizer's 17 characters" in err, err
    assert "fix: leave out --data (micro learns its own sentence)" in err
    assert len(err.strip().splitlines()) == 1


def load_generate_cli():
    spec = importlib.util.spec_from_file_location("generate_cli", REPO / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_decodes_a_micro_checkpoint_with_its_characters(isolated_runtime, tmp_path, capsys):
    assert pretrain.main(["--model", "micro", "--epochs", "30", "--lr", "1e-2", "--batch-size", "4",
                          "--no-plot", "--threads", "1", "--save-dir", str(tmp_path / "ckpt"), "--save-every", "1000"]) == 0
    capsys.readouterr()
    gen = load_generate_cli()
    code = gen.main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "Every effort", "--max-new-tokens", "18"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("Every effort moves you onward."), out
    code = gen.main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "Hello"])
    err = capsys.readouterr().err
    assert code == 2 and "--prompt: character 'H' at position 0 is not in the micro tokenizer" in err, err


def test_the_final_model_of_a_micro_run_generates_with_the_command_it_prints(isolated_runtime, tmp_path, capsys):
    """--out D writes a Hugging Face style config.json: it must keep micro's character tokenizer,
    or the printed `generate.py --checkpoint D` reads a 17-token model with GPT-2's 50,257."""
    import shlex
    out_dir = tmp_path / "final"
    assert pretrain.main(["--model", "micro", "--epochs", "30", "--lr", "1e-2", "--batch-size", "4",
                          "--no-plot", "--threads", "1", "--out", str(out_dir)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Generate with: ")]
    assert len(printed) == 1, printed
    argv = shlex.split(printed[0][len("Generate with: "):])
    assert argv[:2] == ["python", "examples/generate.py"] and argv[2:] == ["--checkpoint", str(out_dir)], argv
    code = load_generate_cli().main(argv[2:] + ["--max-new-tokens", "18"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("Every effort moves you onward."), out


def test_pretrain_micro_says_which_tokens_seen_its_two_closing_lines_count(isolated_runtime, capsys):
    """The book tracks tokens at each evaluation; the run goes on after the last one. The final
    losses' line names the evaluation's count and the total, and the summary's total is that total
    (it printed 'tokens seen 7552' and then 'Summary: 7,680 tokens', with nothing to tell them apart)."""
    import re
    code = pretrain.main(["--model", "micro", "--epochs", "2", "--no-plot", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    m = re.search(r"^final train loss [\d.]+, final val loss [\d.]+ \(at the last evaluation, ([\d,]+) tokens seen"
                  r"(?:; training went on to ([\d,]+))?\)$", out, re.M)
    assert m, out
    at_eval = int(m.group(1).replace(",", ""))
    total = int((m.group(2) or m.group(1)).replace(",", ""))
    summary = int(re.search(r"^Summary: [\d,]+ parameters, \d+ steps, ([\d,]+) tokens", out, re.M).group(1).replace(",", ""))
    assert summary == total and at_eval <= total
    steps = int(re.search(r"^Summary: [\d,]+ parameters, (\d+) steps", out, re.M).group(1))
    assert total == steps * 2 * 8          # every step: batch 2 (the default) x context 8
