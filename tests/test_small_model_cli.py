"""pretrain.py's shape flags and character vocabulary: a small model of any shape, over any
preset (--n-layers, --n-heads, --emb-dim, --qkv-bias, --context-length, --drop-rate), with
--tokenizer char (the training text's characters, saved with the model and read back by
generate.py and --resume); --max-steps on a text file; a bad shape is one line, exit 2,
nothing written. The subprocesses use the NumPy kernels and one thread."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import env, isolated, run_cli
from test_pretrain_cli import refused, snapshot  # noqa: F401  (the one "refused" rule)

REPO = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 30   # no capital E
SMALL = ["--tokenizer", "char", "--n-layers", "2", "--n-heads", "2", "--emb-dim", "16", "--context-length", "16",
         "--batch-size", "4", "--no-plot", "--threads", "1", "--kernels", "numpy", "--eval-freq", "3",
         "--eval-iter", "1"]


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        yield


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "citizens.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_a_char_model_of_the_flags_shape_trains_saves_and_generates_characters_of_its_text(tmp_path, text_file):
    """The issue's run, small: --tokenizer char and the shape flags over the default preset
    (124M) give a 2-layer, 16-wide model whose vocabulary is the text's characters; --max-steps
    stops it; config.json keeps the alphabet; generate.py --checkpoint writes only characters of
    the text (its default prompt, 'Every effort moves you', has characters the text lacks: a
    newline starts it instead)."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(REPO / "examples" / "pretrain.py"), *SMALL, "--data", str(text_file),
                        "--max-steps", "7", "--out", str(out)],
                       capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    alphabet = "".join(sorted(set(TEXT)))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["alphabet"] == alphabet and cfg["tokenizer"] == "char" and cfg["vocab_size"] == len(alphabet)
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"]) == (2, 2, 16, 16)
    assert "Summary: " in p.stdout and ", 7 steps, " in p.stdout, p.stdout[-800:]
    assert "E" not in alphabet                     # so the book's start context could not be read
    g = subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--checkpoint", str(out),
                        "--max-new-tokens", "40", "--kernels", "numpy", "--seed", "1"],
                       capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=600)
    assert g.returncode == 0, g.stderr
    written = g.stdout.rsplit("\n\n", 1)[0]       # the text, then a blank line and the speed line
    print(repr(written))
    assert len(written) >= 40 and set(written) <= set(alphabet), written


def test_max_steps_on_a_text_stops_after_that_many_steps_with_the_schedule_over_them(tmp_path, text_file, capsys):
    """--max-steps with a text file: the run stops after that many optimizer steps (inside an
    epoch), the cosine schedule laid over those steps (the book's lr_at_step with total_steps =
    --max-steps, not the epoch's 60-odd batches)."""
    from tinygrad_gpt.train import lr_at_step
    assert run_cli(*SMALL, "--data", text_file, "--max-steps", "4", "--eval-freq", "1", "--lr", "1e-3",
                   "--min-lr", "1e-4", "--out", tmp_path / "run") == 0
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("Ep ")]
    assert [line.split(")")[0] for line in steps] == [f"Ep 1 (Step {i:06d}" for i in range(4)], steps
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3
    assert records[-1]["lr"] == pytest.approx(lr_at_step(3, 1e-3, 4, 0, 1e-4)) and records[-1]["lr"] < 3e-4


BAD_SHAPES = {
    "heads-do-not-divide": (["--n-heads", "3"], ["--n-heads 3 does not divide --emb-dim 16"]),
    "heads-over-a-preset": (["--model", "tiny", "--tokenizer", "gpt2", "--n-heads", "5", "--emb-dim", "16"],
                            ["--n-heads 5 does not divide --emb-dim 16"]),
    "width-over-a-presets-heads": (["--model", "tiny", "--emb-dim", "66", "--n-heads", "4"],
                                   ["--n-heads 4 does not divide --emb-dim 66"]),
    "zero-layers": (["--n-layers", "0"], ["--n-layers 0", "at least 1"]),
    "negative-width": (["--emb-dim", "-16"], ["--emb-dim -16", "at least 1"]),
    "zero-heads": (["--n-heads", "0"], ["--n-heads 0", "at least 1"]),
    "width-not-a-number": (["--emb-dim", "wide"], ["--emb-dim", "'wide'"]),
    "unknown-tokenizer": (["--tokenizer", "bytes"], ["--tokenizer", "'bytes'"]),
    "start-context-outside-the-text": (["--start-context", "Every"], ["--start-context 'Every'", "'E'"]),
    "max-steps-0": (["--max-steps", "0"], ["--max-steps 0", "at least 1"]),
}


@pytest.mark.parametrize("case", BAD_SHAPES)
def test_a_bad_shape_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text_file, case):
    extra, words = BAD_SHAPES[case]
    refused(tmp_path, capsys, *SMALL, "--data", text_file, "--out", tmp_path / "run", *extra, words=words)


def test_a_bad_shape_in_a_real_process_is_one_line_exit_2(tmp_path, text_file):
    p = subprocess.run([sys.executable, str(REPO / "examples" / "pretrain.py"), "--data", str(text_file),
                        "--tokenizer", "char", "--n-layers", "4", "--n-heads", "3", "--emb-dim", "128",
                        "--context-length", "64"], capture_output=True, text=True, env=env(), cwd=tmp_path,
                       timeout=600)
    assert p.returncode == 2 and p.stdout == "", (p.returncode, p.stdout)
    assert p.stderr.count("\n") == 1 and "--n-heads 3 does not divide --emb-dim 128" in p.stderr, p.stderr


def test_the_shape_flags_change_a_preset_and_the_context_may_grow_past_its_table(tmp_path, capsys, text_file):
    """A preset is a starting point: --model tiny with --n-layers 1 --qkv-bias is tiny's width
    and heads, 1 layer with a qkv bias, and (a new model) a context past tiny's 64."""
    assert run_cli("--model", "tiny", "--tokenizer", "char", "--n-layers", "1", "--qkv-bias", "--context-length", "80",
                   "--batch-size", "2", "--no-plot", "--threads", "1", "--kernels", "numpy", "--max-steps", "1",
                   "--eval-freq", "1", "--eval-iter", "1", "--data", text_file, "--out", tmp_path / "run") == 0
    capsys.readouterr()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"]) == (1, 4, 64, 80)
    from tinygrad_gpt.loading import load_model
    model = load_model(tmp_path / "run")
    assert model.trf_blocks[0].att.W_query.bias is not None


def test_resume_keeps_the_char_model_and_refuses_another_shape(tmp_path, capsys, text_file):
    """--resume rebuilds the character model from its checkpoint (its alphabet, its shape) and
    continues; a shape flag that contradicts the checkpoint is one line, exit 2."""
    ck = tmp_path / "ck"
    assert run_cli(*SMALL, "--data", text_file, "--max-steps", "6", "--save-dir", ck, "--save-every", "3",
                   "--out", tmp_path / "run") == 0
    capsys.readouterr()
    refused(tmp_path, capsys, "--resume", ck, "--n-layers", "3", words=["--n-layers 3 conflicts", "--n-layers 2"])
    refused(tmp_path, capsys, "--resume", ck, "--tokenizer", "gpt2", words=["--tokenizer gpt2 conflicts"])
    state = json.loads(next(iter(sorted(ck.glob("step-*")))).joinpath("state.json").read_text())
    assert state["config"]["model_config"]["alphabet"] == "".join(sorted(set(TEXT)))
    assert run_cli("--resume", ck, "--n-layers", "2", "--max-steps", "9", "--out", tmp_path / "run",
                   "--overwrite") == 0
    out = capsys.readouterr().out
    assert "Resuming from" in out and ", 9 steps, " in out, out[-600:]


def test_generate_reads_the_alphabet_from_every_place_a_char_run_saves_its_model(tmp_path, capsys, text_file):
    """generate.py --checkpoint on a char run's --out (config.json), its --save-dir (the newest
    checkpoint's state.json) and one step directory: the text's characters every time, and from
    the final model and the last checkpoint (the same weights) the same text, and the parameter
    count trained. A checkpoint once lost its alphabet on loading (read with micro's 17
    characters: exit 2), and config.json came back with zero qkv biases (3 x C more a block)."""
    from tinygrad_gpt.cli import generate
    ck, out = tmp_path / "ck", tmp_path / "run"
    assert run_cli(*SMALL, "--data", text_file, "--max-steps", "4", "--save-dir", ck, "--save-every", "2",
                   "--out", out) == 0
    trained = capsys.readouterr().out.split("Summary: ")[1].split(" parameters")[0]   # "4,760"
    alphabet = "".join(sorted(set(TEXT)))
    texts = {}
    for where in (out, ck, ck / "step-000001"):
        assert generate.main(["--checkpoint", str(where), "--max-new-tokens", "30", "--kernels", "numpy"]) == 0
        captured = capsys.readouterr()               # the model as trained: no qkv biases added on loading
        assert f"({trained} parameters" in captured.err and captured.err.count("\n") == 1, (trained, captured.err)
        texts[where] = captured.out.rsplit("\n\n", 1)[0]
        assert len(texts[where]) >= 30 and set(texts[where]) <= set(alphabet), texts[where]
    assert texts[out] == texts[ck]
    assert generate.main(["--checkpoint", str(out), "--stop-at-eos", "--kernels", "numpy"]) == 2
    captured = capsys.readouterr()                   # no <|endoftext|> among the characters: not silently ignored
    assert captured.out == "" and captured.err.count("\n") == 1 and "--stop-at-eos" in captured.err, captured


def test_a_resumed_char_run_ends_with_the_uninterrupted_runs_bits(tmp_path, capsys, text_file):
    """--resume of a character run is exact: stopped at step 4 of 8 and resumed, the last
    checkpoint (weights, AdamW's moments, losses, generator states) is byte for byte the one
    of the run that went through, and so is the final model's file."""
    from helpers import assert_same_run
    recipe = [*SMALL, "--data", text_file, "--max-steps", "8", "--lr", "1e-3", "--min-lr", "1e-4",
              "--warmup-steps", "2", "--grad-clip", "1.0", "--save-every", "4"]
    assert run_cli(*recipe, "--save-dir", tmp_path / "whole", "--out", tmp_path / "whole-run") == 0
    assert run_cli(*recipe, "--save-dir", tmp_path / "first", "--out", tmp_path / "first-run") == 0
    (tmp_path / "half").mkdir()
    (tmp_path / "first" / "step-000003").rename(tmp_path / "half" / "step-000003")
    assert run_cli("--resume", tmp_path / "half", "--out", tmp_path / "half-run") == 0
    out = capsys.readouterr().out
    assert "Resuming from" in out and ", 8 steps, " in out, out[-600:]
    assert_same_run(tmp_path / "whole" / "step-000007", tmp_path / "half" / "step-000007")
    assert (tmp_path / "whole-run" / "model.safetensors").read_bytes() == \
        (tmp_path / "half-run" / "model.safetensors").read_bytes()


def test_explain_traces_a_char_runs_trained_model_with_its_characters(tmp_path, capsys, text_file):
    """explain_backward.py --checkpoint on a char run's --out and --save-dir: the trained
    weights (the loss traced is the loaded model's own on that batch), its shape, its
    vocabulary (the batch read in the text's characters, a uniform guess over them), with
    --values --worked, --optimizer and --break; a text with other characters, a context past
    the model's, or --model/--use-op beside --checkpoint is one line, exit 2."""
    from tinygrad_gpt import explain, no_grad
    from tinygrad_gpt.functional import cross_entropy
    from tinygrad_gpt.loading import load_model
    from tinygrad_gpt.tokenizer import tokenizer_for
    ck, out = tmp_path / "ck", tmp_path / "run"
    assert run_cli(*SMALL, "--data", text_file, "--max-steps", "4", "--save-dir", ck, "--out", out) == 0
    trained = capsys.readouterr().out.split("Summary: ")[1].split(" parameters")[0]
    alphabet = "".join(sorted(set(TEXT)))
    model = load_model(out)
    ids = np.array(tokenizer_for(model.cfg).encode(TEXT[:9]))
    with no_grad():
        loss = cross_entropy(model(ids[None, :8]), ids[None, 1:]).item()
    for where in (out, ck):
        assert explain.main(["--checkpoint", str(where), "--data", str(text_file), "--context-length", "8",
                             "--drop-rate", "0", "--values", "--worked", "LayerNorm", "--optimizer"]) == 0
        text = capsys.readouterr().out
        print(text[:600])
        assert f": {trained} parameters in " in text and " 2 blocks, dropout 0.0" in text
        assert f"one batch of 1 x 8 tokens: {TEXT[:8]!r}..." in text
        assert f"forward: loss {loss:.4f} (a uniform guess over {len(alphabet)} tokens" in text
        assert "-> tok_emb.weight" in text and "AdamW" in text
    assert explain.main(["--checkpoint", str(out), "--data", str(text_file), "--context-length", "8",
                         "--break", "layernorm-mean"]) == 0
    assert "first departure" in capsys.readouterr().out
    other = tmp_path / "other.txt"
    other.write_text("Every effort moves you. " * 20, encoding="utf-8")
    for argv, words in (
            (["--data", other], ["--data", "'E'", "not in the char tokenizer's", "the text it was trained on"]),
            (["--data", text_file, "--context-length", "17"], ["--context-length 17", "at most 16"]),
            (["--model", "tiny"], ["--checkpoint", "--model", "leave out one of them"]),
            (["--use-op", "x.py:LayerNorm"], ["--checkpoint", "--use-op", "leave out one of them"])):
        assert explain.main(["--checkpoint", str(out), *map(str, argv)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured
        assert all(w in captured.err for w in words), (words, captured.err)
