"""Finetuning on the engine's own API (tinygrad_gpt.finetune, tinygrad_gpt.lora) and the two
commands, examples/finetune_classifier.py and examples/finetune_instruct.py, end to end on
small data made here and a tiny GPT-2 directory written by save_pretrained (no download)."""
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import GPTModel, manual_seed
from tinygrad_gpt import finetune as ft
from tinygrad_gpt.loading import load_model
from tinygrad_gpt.data import SAMPLE_TEXT_PATH, DataLoader
from tinygrad_gpt.lora import LinearWithLoRA, merge_lora
from tinygrad_gpt.optim import AdamW
from tinygrad_gpt.pretrained import save_pretrained
from tinygrad_gpt.tensor import no_grad
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CFG = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}
SENTENCES = [s.strip().replace("\n", " ") for s in SAMPLE_TEXT_PATH.read_text(encoding="utf-8").split(".")
             if 20 < len(s.strip()) < 120]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    manual_seed(0)
    return save_pretrained(GPTModel(CFG), tmp_path_factory.mktemp("hf") / "gpt2-tiny")


def write_csv(path, n=40):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Label", "Text"])
        for i, t in enumerate(SENTENCES[:n]):
            w.writerow(["spam" if i % 2 else "ham", ("WIN a prize now! " + t) if i % 2 else t])
    return path


def records(n=24):
    return [{"instruction": "Repeat the sentence.", "input": SENTENCES[2 * i] if i % 3 else "",
             "output": SENTENCES[2 * i + 1]} for i in range(n)]


def run(script, *args):
    return subprocess.run([sys.executable, f"examples/{script}", *args, "--kernels", "numpy"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


# ----------------------------------------------------------------------------- the library
def test_collate_pads_with_endoftext_and_masks_all_but_the_first_padding_target():
    x, y = ft.custom_collate_fn([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]])
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (3, 5)
    assert x.tolist() == [[1, 2, 3, 4, 5], [6, 7, 50256, 50256, 50256], [8, 9, 10, 50256, 50256]]
    assert y.tolist() == [[2, 3, 4, 5, 50256], [7, 50256, -100, -100, -100], [9, 10, 50256, -100, -100]]
    x, y = ft.custom_collate_fn([[1, 2, 3, 4, 5], [6, 7]], allowed_max_length=3)
    assert x.tolist() == [[1, 2, 3], [6, 7, 50256]] and y.tolist() == [[2, 3, 4], [7, 50256, -100]]


def test_collate_is_the_books_custom_collate_fn():
    from helpers import require
    require("torch")
    ch07 = require("llms_from_scratch.ch07")
    tok = get_gpt2_tokenizer()
    data = records(9)
    ours = ft.InstructionDataset(data, tok)
    book = ch07.InstructionDataset(data, tok)
    assert ours.encoded_texts == [book[i] for i in range(len(book))]
    x, _ = ours[np.arange(9)]
    assert x.shape[1] == max(len(e) for e in ours.encoded_texts)              # padded to the longest (+1 - 1)
    for allowed in (None, 20):
        bx, by = ch07.custom_collate_fn([book[i] for i in range(9)], allowed_max_length=allowed)
        x, y = ft.custom_collate_fn(ours.encoded_texts, allowed_max_length=allowed)
        assert x.tolist() == bx.tolist() and y.tolist() == by.tolist()
    assert ft.format_input(data[1]) == ch07.format_input(data[1])


def test_lora_starts_as_the_base_model_trains_only_a_and_b_and_merges_to_the_same_function():
    manual_seed(1)
    model = GPTModel(CFG)
    ids = np.random.default_rng(0).integers(0, 50257, (2, 12))
    ft.as_classifier(model, 2)
    with no_grad():
        base = model(ids).data.copy()                                      # (B, T, 2)
    ft.add_lora(model, rank=4, alpha=8.0)
    assert isinstance(model.out_head, LinearWithLoRA) and isinstance(model.trf_blocks[1].ff.layers[2], LinearWithLoRA)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(("lora.A", "lora.B")) for n in names) and len(names) == 2 * 13
    assert ft.trainable_parameters(model) == sum(4 * (m.lora.A.shape[0] + m.lora.B.shape[1])
                                                 for m in model.modules() if isinstance(m, LinearWithLoRA))
    A = model.trf_blocks[0].att.W_query.lora.A.data
    assert np.abs(A).max() <= 0.5 and np.abs(A).max() > 0.4               # U(-1/sqrt(rank), 1/sqrt(rank))
    with no_grad():
        np.testing.assert_array_equal(model(ids).data, base)               # B = 0: the model it adapts
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        ft.calc_loss_batch(ids, np.array([0, 1]), model).backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not np.array_equal(before[n], p.data)}
    assert moved and all(n.endswith(("lora.A", "lora.B")) for n in moved)   # base weights unmoved
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    with no_grad():
        adapted = model(ids).data.copy()
    merge_lora(model)
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
    with no_grad():
        np.testing.assert_allclose(model(ids).data, adapted, rtol=1e-4, atol=1e-5)
    assert not np.allclose(adapted, base)


def test_classification_data_from_a_csv_or_a_folder_and_the_classifier_learns(tmp_path):
    texts, labels, classes = ft.read_classification_data(write_csv(tmp_path / "train.csv"))
    assert classes == ["ham", "spam"] and labels[:4] == [0, 1, 0, 1] and len(texts) == 40
    for name, start in (("neg", 0), ("pos", 1)):
        (tmp_path / "dir" / name).mkdir(parents=True)
        for i in range(start, 10, 2):
            (tmp_path / "dir" / name / f"{i}.txt").write_text(SENTENCES[i], encoding="utf-8")
    t2, l2, c2 = ft.read_classification_data(tmp_path / "dir")
    assert c2 == ["neg", "pos"] and sorted(l2) == [0] * 5 + [1] * 5 and t2[0] == SENTENCES[0]
    tok = get_gpt2_tokenizer()
    ds = ft.ClassificationDataset(texts, labels, tok)
    x, y = ds[np.arange(4)]
    assert x.shape == (4, ds.max_length) and x[0, -1] == 50256 and y.tolist() == [0, 1, 0, 1]
    manual_seed(2)
    model = ft.as_classifier(GPTModel(CFG), 2)
    loader = DataLoader(ds, batch_size=8, shuffle=False, drop_last=True)
    opt = AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    result = ft.train_classifier_simple(model, loader, loader, opt, num_epochs=3, eval_freq=4, eval_iter=5,
                                        warmup_steps=2, min_lr=1e-4, grad_clip=1.0, file=io.StringIO())
    assert result[4] == 3 * 5 * 8 and result[3][-1] >= 0.8 and result[0][-1] < result[0][0]   # 50/50 data
    progress = (14 - 2) / (15 - 2)                                          # the last of 15 steps, after warmup
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 + 1.9e-3 * 0.5 * (1 + np.cos(np.pi * progress)))


# ----------------------------------------------------------------------------- the commands
def test_finetune_classifier_runs_end_to_end_and_saves_a_classifier_that_loads(tmp_path, tiny_hf):
    data = write_csv(tmp_path / "train.csv")
    out = tmp_path / "classifier"
    done = run("finetune_classifier.py", "--init-from", str(tiny_hf), "--data", str(data), "--out", str(out),
               "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--eval-freq", "3", "--eval-iter", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    print("\n" + done.stdout)
    assert "40 examples, classes ['ham', 'spam']; 28 training, 4 validation, 8 test" in done.stdout
    assert [s for s in lines if s.startswith("Ep ")][0].startswith("Ep 1 (Step 000000): Train loss ")
    assert sum(bool(re.fullmatch(r"Training accuracy: \d+\.\d\d% \| Validation accuracy: \d+\.\d\d%", s))
               for s in lines) == 2
    test_line = next(s for s in lines if s.startswith("Test accuracy: "))
    model, classes, max_length = ft.load_classifier(out)
    assert classes == ["ham", "spam"] and model.out_head.weight.shape == (2, 32)
    texts, labels, _ = ft.read_classification_data(data)
    _, _, test_idx = ft.random_split(len(texts), seed=123)
    test = ft.ClassificationDataset([texts[i] for i in test_idx], [labels[i] for i in test_idx],
                                    get_gpt2_tokenizer(), max_length)
    acc = ft.calc_accuracy_loader(DataLoader(test, batch_size=4), model)
    assert test_line == f"Test accuracy: {acc * 100:.2f}%"                 # the saved model is the one tested


def test_finetune_instruct_with_lora_runs_end_to_end_and_writes_the_responses(tmp_path, tiny_hf):
    data = tmp_path / "instruction-data.json"
    data.write_text(json.dumps(records()), encoding="utf-8")
    out = tmp_path / "instruct"
    done = run("finetune_instruct.py", "--init-from", str(tiny_hf), "--data", str(data), "--out", str(out),
               "--lora", "8", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--eval-freq", "2",
               "--eval-iter", "1", "--warmup-steps", "2", "--min-lr", "1e-5", "--clip-grad", "1.0",
               "--max-new-tokens", "5")
    assert done.returncode == 0, done.stderr
    print("\n" + done.stdout[-2000:])
    assert "Training set length: 20\nValidation set length: 2\nTest set length: 2" in done.stdout
    assert re.search(r"Total trainable parameters after: [\d,]+ \(LoRA rank 8, alpha 8\)", done.stdout)
    assert "Schedule: linear warmup over 2 steps from 3e-05; cosine decay to 1e-05; gradient norm clipped at 1 after the warmup" \
        in done.stdout
    responses = json.loads((out / "instruction-data-with-response.json").read_text(encoding="utf-8"))
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in responses] == records()[22:]
    assert all(isinstance(r["model_response"], str) for r in responses)
    model = load_model(out / "model")                                     # the merged model, generate.py's
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules()) and model.cfg["emb_dim"] == 32
    losses = json.loads((out / "losses.json").read_text(encoding="utf-8"))
    assert len(losses["train_losses"]) == 3 and all(np.isfinite(losses["val_losses"]))


def test_finetune_classifier_starts_from_a_pretrain_run_its_final_model_or_its_checkpoint(tmp_path):
    from helpers import TINY, run_cli, small_text
    text = tmp_path / "story.txt"
    text.write_text(small_text(300), encoding="utf-8")
    assert run_cli(*TINY, "--epochs", "1", "--data", text, "--out", tmp_path / "pre", "--save-dir",
                   tmp_path / "ck") == 0
    data = write_csv(tmp_path / "t.csv", n=16)
    for start in ("pre", "ck"):
        done = run("finetune_classifier.py", "--init-from", str(tmp_path / start), "--data", str(data),
                   "--out", str(tmp_path / f"out-{start}"), "--epochs", "1", "--batch-size", "4", "--eval-freq", "1",
                   "--eval-iter", "1")
        assert done.returncode == 0, done.stderr
        assert "16 tokens each" in done.stdout                                 # capped by the model's context 16
        assert ft.load_classifier(tmp_path / f"out-{start}")[0].out_head.weight.shape == (2, 64)


@pytest.mark.parametrize("script,make,extra,message", [
    ("finetune_classifier.py", lambda d: d / "missing.csv", [], "missing.csv: no such file or folder"),
    ("finetune_classifier.py", lambda d: (d / "bad.csv").write_text("a,b\n1,2\n") and d / "bad.csv", [],
     "expected a CSV with a header row naming the columns Label and Text"),
    ("finetune_classifier.py", lambda d: write_csv(d / "t.csv"), ["--lora", "0"], "--lora RANK must be at least 1"),
    ("finetune_instruct.py", lambda d: (d / "bad.json").write_text("{") and d / "bad.json", [], "not a JSON file"),
    ("finetune_instruct.py", lambda d: (d / "r.json").write_text('[{"instruction": "x"}]') and d / "r.json", [],
     "record 0 is not an object with the string fields input, instruction, output"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_hf, script, make, extra, message):
    data = make(tmp_path)
    done = run(script, "--init-from", str(tiny_hf), "--data", str(data), "--out", str(tmp_path / "o"), *extra)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert done.stderr.startswith(f"{script}: error: ") and not (tmp_path / "o").exists()


def test_an_existing_out_directory_is_never_overwritten(tmp_path, tiny_hf):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = run("finetune_classifier.py", "--init-from", str(tiny_hf), "--data", str(write_csv(tmp_path / "t.csv")),
               "--out", str(out))
    assert done.returncode == 2 and "is not an empty directory; nothing is overwritten" in done.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
