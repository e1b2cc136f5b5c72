"""The rest of the book on the engine: chapter 6 (classifier finetuning), chapter 7 (instruction
finetuning), appendix D (warmup, cosine, clipping) and appendix E (LoRA). The book's own
functions (llms_from_scratch 1.0.19) run on tinygrad_gpt.torch and on real PyTorch in one
process (binding.load_book_modules), from the same weights, shuffle off, on small data made
here: the same losses (rel 1e-4), accuracies, trainable counts and learning rates.
"""
import functools

import numpy as np
import pytest
from helpers import require

torch = require("torch")
real_ch04 = require("llms_from_scratch.ch04")
real_ch05 = require("llms_from_scratch.ch05")
real_ch06 = require("llms_from_scratch.ch06")
real_ch07 = require("llms_from_scratch.ch07")
real_apd = require("llms_from_scratch.appendix_d")
real_ape = require("llms_from_scratch.appendix_e")
require("pandas")

import tinygrad_gpt.torch as shim                               # noqa: E402
from tinygrad_gpt.data import SAMPLE_TEXT_PATH                  # noqa: E402
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer           # noqa: E402
from tinygrad_gpt.torch.binding import load_book_modules        # noqa: E402

ch02, ch04, ch05, ch06, ch07, apd, ape = load_book_modules("ch02", "ch04", "ch05", "ch06", "ch07",
                                                           "appendix_d", "appendix_e")
real_ch02 = require("llms_from_scratch.ch02")

CFG = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}
TOKENIZER = get_gpt2_tokenizer()
STORY = SAMPLE_TEXT_PATH.read_text(encoding="utf-8")


def sentences(n, start=0):
    parts = [s.strip().replace("\n", " ") for s in STORY.split(".") if 20 < len(s.strip()) < 160]
    return parts[start:start + n]


def copy_weights(book, ours):
    state = book.state_dict()
    assert list(ours.state_dict()) == list(state)
    result = ours.load_state_dict(state)
    assert result.missing_keys == [] == result.unexpected_keys
    return ours


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def arrays(model):
    return {n: np.array(p.detach().numpy() if hasattr(p, "detach") else p.data, copy=True)
            for n, p in model.named_parameters()}


def classifier(chapter4, torch_module, seed=123):
    """Chapter 6's model surgery: everything frozen, a new 2-class head, the last block and
    the final norm trainable again."""
    torch_module.manual_seed(seed)
    model = chapter4.GPTModel(CFG)
    for param in model.parameters():
        param.requires_grad = False
    torch_module.manual_seed(seed + 1)
    model.out_head = torch_module.nn.Linear(in_features=CFG["emb_dim"], out_features=2)
    for param in model.trf_blocks[-1].parameters():
        param.requires_grad = True
    for param in model.final_norm.parameters():
        param.requires_grad = True
    return model


def spam_csvs(tmp_path):
    """Label,Text CSVs as the book's chapter 6 writes them (labels 0/1), from the story."""
    import pandas as pd
    rows = sentences(36)
    labels = [i % 2 for i in range(len(rows))]
    texts = [("WIN a prize now! " + t) if y else t for t, y in zip(rows, labels)]
    df = pd.DataFrame({"Label": labels, "Text": texts})
    paths = []
    for name, part in (("train", df[:24]), ("validation", df[24:32]), ("test", df[32:])):
        path = tmp_path / f"{name}.csv"
        part.to_csv(path, index=None)
        paths.append(path)
    return paths


def spam_loaders(chapter6, torch_module, paths, max_length=None):
    train_ds = chapter6.SpamDataset(paths[0], max_length=max_length, tokenizer=TOKENIZER)
    val_ds = chapter6.SpamDataset(paths[1], max_length=train_ds.max_length, tokenizer=TOKENIZER)
    DataLoader = torch_module.utils.data.DataLoader
    return (DataLoader(train_ds, batch_size=4, shuffle=False, num_workers=0, drop_last=True),
            DataLoader(val_ds, batch_size=4, shuffle=False, num_workers=0, drop_last=False))


def assert_close_lists(ours, theirs, what):
    assert len(ours) == len(theirs) >= 1, what
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, err_msg=what)


# ----------------------------------------------------------------------------- chapter 6
def test_ch06_train_classifier_simple_gives_pytorchs_losses_accuracies_and_trainable_count(tmp_path, capsys):
    paths = spam_csvs(tmp_path)
    book = classifier(real_ch04, torch)
    ours = copy_weights(book, classifier(ch04, shim))
    assert trainable(ours) == trainable(book) < sum(p.numel() for p in ours.parameters())
    before = arrays(ours)
    train, val = spam_loaders(ch06, shim, paths)
    t_train, t_val = spam_loaders(real_ch06, torch, paths)
    args = dict(num_epochs=2, eval_freq=2, eval_iter=2)
    result = ch06.train_classifier_simple(ours, train, val, shim.optim.AdamW(ours.parameters(), lr=5e-4,
                                          weight_decay=0.1), shim.device("cpu"), **args)
    ours_out = capsys.readouterr().out
    t_result = real_ch06.train_classifier_simple(book, t_train, t_val, torch.optim.AdamW(book.parameters(),
                                                 lr=5e-4, weight_decay=0.1), torch.device("cpu"), **args)
    book_out = capsys.readouterr().out
    print(f"\nshim:\n{ours_out}pytorch:\n{book_out}")
    for i, what in enumerate(["train losses", "val losses", "train accuracies", "val accuracies"]):
        assert_close_lists(result[i], t_result[i], what)
    assert result[2] == t_result[2] and result[3] == t_result[3]          # accuracies: the same counts
    assert result[4] == t_result[4] == 2 * 6 * 4                          # examples seen
    acc = ch06.calc_accuracy_loader(val, ours, "cpu")
    assert acc == real_ch06.calc_accuracy_loader(t_val, book, "cpu")
    after = arrays(ours)
    frozen = [n for n, p in ours.named_parameters() if not p.requires_grad]
    assert frozen and all(np.array_equal(before[n], after[n]) for n in frozen)   # unmoved
    assert not np.array_equal(before["out_head.weight"], after["out_head.weight"])
    for n, p in ours.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n                                       # no gradient computed
    # the book saves the classifier: torch.save / torch.load (safetensors here), then loads it back
    shim.save(ours.state_dict(), tmp_path / "review_classifier.pth")
    fresh = ch04.GPTModel(CFG)
    fresh.out_head = shim.nn.Linear(CFG["emb_dim"], 2)
    fresh.load_state_dict(shim.load(tmp_path / "review_classifier.pth", weights_only=True))
    assert ch06.calc_accuracy_loader(val, fresh, "cpu") == acc
    assert (tmp_path / "review_classifier.pth").read_bytes()[8:9] == b"{"   # a safetensors header


# ----------------------------------------------------------------------------- chapter 7
def instruction_records(n=14):
    rows = sentences(2 * n, start=40)
    records = []
    for i in range(n):
        records.append({"instruction": "Rewrite the sentence in your own words." if i % 3 else
                        "Repeat the sentence.", "input": rows[2 * i] if i % 4 else "",
                        "output": rows[2 * i + 1]})
    return records


def instruction_loaders(chapter7, torch_module, records, allowed_max_length=None):
    collate = functools.partial(chapter7.custom_collate_fn, device="cpu", allowed_max_length=allowed_max_length)
    DataLoader = torch_module.utils.data.DataLoader
    train = DataLoader(chapter7.InstructionDataset(records[:10], TOKENIZER), batch_size=3, collate_fn=collate,
                       shuffle=False, drop_last=True, num_workers=0)
    val = DataLoader(chapter7.InstructionDataset(records[10:], TOKENIZER), batch_size=3, collate_fn=collate,
                     shuffle=False, drop_last=False, num_workers=0)
    return train, val


def test_ch07_custom_collate_fn_gives_pytorchs_batches_with_minus_100_masking():
    batch = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    x, y = ch07.custom_collate_fn(batch)
    tx, ty = real_ch07.custom_collate_fn(batch)
    assert x.dtype == np.int64 and y.dtype == np.int64
    assert x.tolist() == tx.tolist() and y.tolist() == ty.tolist()
    assert y.tolist()[1] == [7, 50256, -100, -100, -100]
    x, y = ch07.custom_collate_fn(batch, allowed_max_length=3)
    tx, ty = real_ch07.custom_collate_fn(batch, allowed_max_length=3)
    assert x.tolist() == tx.tolist() and y.tolist() == ty.tolist() and x.shape == (3, 3)
    # batches made by the book's dataset and DataLoader(collate_fn=partial(...)): identical
    records = instruction_records()
    for (a, b), (ta, tb) in zip(*[instruction_loaders(m, t, records, 48)[0] for m, t in
                                  ((ch07, shim), (real_ch07, torch))]):
        assert a.tolist() == ta.tolist() and b.tolist() == tb.tolist()


def test_ch07_train_model_simple_with_ignore_index_gives_pytorchs_losses(capsys):
    records = instruction_records()
    real_ch04.torch.manual_seed(7)
    book = real_ch04.GPTModel(CFG)
    ours = copy_weights(book, ch04.GPTModel(CFG))
    train, val = instruction_loaders(ch07, shim, records, allowed_max_length=CFG["context_length"])
    t_train, t_val = instruction_loaders(real_ch07, torch, records, allowed_max_length=CFG["context_length"])
    x, y = next(iter(train))
    assert (y.numpy() == -100).any()                        # the masking is exercised
    start = ch07.format_input(records[10])
    args = dict(num_epochs=2, eval_freq=1, eval_iter=2, start_context=start, tokenizer=TOKENIZER)
    result = ch05.train_model_simple(ours, train, val, shim.optim.AdamW(ours.parameters(), lr=5e-4,
                                     weight_decay=0.1), "cpu", **args)
    ours_out = capsys.readouterr().out
    t_result = real_ch05.train_model_simple(book, t_train, t_val, torch.optim.AdamW(book.parameters(),
                                            lr=5e-4, weight_decay=0.1), "cpu", **args)
    book_out = capsys.readouterr().out
    print(f"\nshim:\n{ours_out}\npytorch:\n{book_out}")
    assert_close_lists(result[0], t_result[0], "train losses")
    assert_close_lists(result[1], t_result[1], "val losses")
    assert result[2] == t_result[2]
    assert result[0][-1] < result[0][0]
    # the loss ignores the -100 positions exactly as PyTorch's
    logits = ours(shim.tensor(x.numpy()))
    loss = shim.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    t_loss = torch.nn.functional.cross_entropy(book(torch.tensor(x.numpy())).flatten(0, 1),
                                               torch.tensor(y.numpy()).flatten())
    assert loss.item() == pytest.approx(t_loss.item(), rel=1e-5)


# ----------------------------------------------------------------------------- appendix D
def test_appendix_d_train_model_gives_pytorchs_losses_and_learning_rates(capsys):
    text = STORY[:7000]

    def loaders(chapter2):
        split = int(0.9 * len(text))
        return (chapter2.create_dataloader_v1(text[:split], batch_size=2, max_length=32, stride=32,
                                              shuffle=False, drop_last=True, num_workers=0),
                chapter2.create_dataloader_v1(text[split:], batch_size=2, max_length=32, stride=32,
                                              shuffle=False, drop_last=False, num_workers=0))
    import tiktoken
    real_get = tiktoken.get_encoding
    tiktoken.get_encoding = lambda name: TOKENIZER             # the real side, offline
    try:
        t_train, t_val = loaders(real_ch02)
    finally:
        tiktoken.get_encoding = real_get
    train, val = loaders(ch02)
    torch.manual_seed(3)
    book = real_ch04.GPTModel(CFG)
    ours = copy_weights(book, ch04.GPTModel(CFG))
    args = dict(n_epochs=2, eval_freq=3, eval_iter=1, start_context="Every effort moves you", tokenizer=TOKENIZER,
                warmup_steps=4, initial_lr=1e-5, min_lr=1e-5)
    result = apd.train_model(ours, train, val, shim.optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=0.1),
                             "cpu", **args)
    ours_out = capsys.readouterr().out
    t_result = real_apd.train_model(book, t_train, t_val, torch.optim.AdamW(book.parameters(), lr=1e-3,
                                    weight_decay=0.1), "cpu", **args)
    book_out = capsys.readouterr().out
    print(f"\nshim:\n{ours_out}\npytorch:\n{book_out}")
    assert len(train) >= 6
    assert result[3] == t_result[3] and len(result[3]) == 2 * len(train)      # the learning rates, equal
    assert result[3][0] == 1e-5 and max(result[3]) == pytest.approx(1e-3, rel=0.3)
    assert_close_lists(result[0], t_result[0], "train losses")
    assert_close_lists(result[1], t_result[1], "val losses")
    assert result[2] == t_result[2]
    # find_highest_gradient reads param.grad.data.flatten().max()
    for model, module, t in ((ours, shim, ch05), (book, torch, real_ch05)):
        x, y = next(iter(train))
        model.zero_grad()
        loss = t.calc_loss_batch(module.tensor(x.numpy()), module.tensor(y.numpy()), model, "cpu")
        loss.backward()
    ours_max, book_max = float(apd.find_highest_gradient(ours)), float(real_apd.find_highest_gradient(book))
    assert ours_max == pytest.approx(book_max, rel=1e-4)
    # clip_grad_norm_: torch's returned norm and clipped gradients
    norm = shim.nn.utils.clip_grad_norm_(ours.parameters(), max_norm=0.5)
    t_norm = torch.nn.utils.clip_grad_norm_(book.parameters(), max_norm=0.5)
    assert norm.dtype == np.float32 and norm.item() == pytest.approx(t_norm.item(), rel=1e-4)
    total = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in ours.parameters()))
    assert total == pytest.approx(0.5, rel=1e-4) and norm.item() > 0.5


def test_optimizer_param_groups_lr_written_is_the_lr_the_engine_uses():
    p = shim.nn.Parameter(np.ones(3, dtype=np.float32))
    q = shim.nn.Parameter(np.ones(3, dtype=np.float32))
    opt = shim.optim.AdamW([p, q], lr=1.0, weight_decay=0.0)
    assert opt.param_groups[0]["lr"] == 1.0
    for group in opt.param_groups:
        group["lr"] = 0.25
    p.grad = np.ones(3, dtype=np.float32)                    # q has no gradient: AdamW skips it
    opt.step()
    np.testing.assert_allclose(p.data, 0.75, rtol=1e-6)       # Adam's first step moves by lr
    np.testing.assert_array_equal(q.data, 1.0)
    assert id(q) not in opt.state


# ----------------------------------------------------------------------------- appendix E
def lora_classifier(chapter4, chapter_e, torch_module):
    model = classifier(chapter4, torch_module)
    for param in model.parameters():
        param.requires_grad = False
    torch_module.manual_seed(5)
    chapter_e.replace_linear_with_lora(model, rank=4, alpha=8)
    return model


def test_appendix_e_lora_replace_and_training_gives_pytorchs_numbers_base_weights_unmoved(tmp_path, capsys):
    paths = spam_csvs(tmp_path)
    book = lora_classifier(real_ch04, real_ape, torch)
    ours = lora_classifier(ch04, ape, shim)
    assert isinstance(ours.trf_blocks[0].att.W_query, ape.LinearWithLoRA)
    assert isinstance(ours.trf_blocks[1].ff.layers[0], ape.LinearWithLoRA) and isinstance(ours.out_head,
                                                                                        ape.LinearWithLoRA)
    copy_weights(book, ours)
    n_linear = 2 * 6 + 1
    assert trainable(ours) == trainable(book) == sum(p.numel() for n, p in ours.named_parameters()
                                                     if ".lora." in n or n.startswith("lora."))
    assert len([n for n, p in ours.named_parameters() if p.requires_grad]) == 2 * n_linear
    # B starts at zero: the LoRA model gives the base model's logits
    x = np.random.default_rng(0).integers(0, 50257, (2, 10))
    np.testing.assert_allclose(ours(shim.tensor(x)).numpy(), book(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    # kaiming_uniform_(A, a=sqrt(5)): U(-1/sqrt(rank), 1/sqrt(rank)), as torch
    shim.manual_seed(0)
    A = ape.LoRALayer(CFG["emb_dim"], 16, rank=4, alpha=1).A.numpy()
    assert A.shape == (32, 4) and np.abs(A).max() <= 0.5 and np.abs(A).max() > 0.4 and abs(A.mean()) < 0.1
    before = arrays(ours)
    train, val = spam_loaders(ch06, shim, paths)
    t_train, t_val = spam_loaders(real_ch06, torch, paths)
    args = dict(num_epochs=2, eval_freq=2, eval_iter=2)
    result = ch06.train_classifier_simple(ours, train, val, shim.optim.AdamW(ours.parameters(), lr=5e-3,
                                          weight_decay=0.1), "cpu", **args)
    t_result = real_ch06.train_classifier_simple(book, t_train, t_val, torch.optim.AdamW(book.parameters(),
                                                 lr=5e-3, weight_decay=0.1), "cpu", **args)
    print("\n" + capsys.readouterr().out)
    for i, what in enumerate(["train losses", "val losses", "train accuracies", "val accuracies"]):
        assert_close_lists(result[i], t_result[i], what)
    assert result[2:] == t_result[2:]
    after = arrays(ours)
    lora = [n for n in after if ".lora." in n or n.startswith("lora.")]
    assert all(np.array_equal(before[n], after[n]) for n in after if n not in lora)   # base weights unmoved
    assert all(not np.array_equal(before[n], after[n]) for n in lora if n.endswith(".B"))
    book_after = {n: p.detach().numpy() for n, p in book.named_parameters()}
    worst = max(float(np.linalg.norm(after[n] - book_after[n]) / np.linalg.norm(book_after[n])) for n in lora)
    print(f"LoRA parameters after training: worst relative difference to PyTorch {worst:.2e}")
    assert worst < 1e-4


# ----------------------------------------------------------------------------- the runner: a plain PyTorch script
BOOK_SCRIPT = '''
import functools, json, sys
import torch
import safetensors.numpy
import tiktoken
from llms_from_scratch.ch04 import GPTModel
from llms_from_scratch.ch05 import train_model_simple
from llms_from_scratch.ch06 import SpamDataset, train_classifier_simple, calc_accuracy_loader
from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn
from llms_from_scratch.appendix_d import train_model
from llms_from_scratch.appendix_e import replace_linear_with_lora

folder = sys.argv[1]
cfg = json.load(open(f"{folder}/cfg.json"))
tokenizer = tiktoken.get_encoding("gpt2")


def load(model, name):
    arrays = safetensors.numpy.load_file(f"{folder}/{name}.safetensors")
    model.load_state_dict({k: torch.tensor(v) for k, v in arrays.items()})


results = {}
# chapter 7: the book's dataset, collate (-100) and chapter 5's loop
data = json.load(open(f"{folder}/instructions.json"))
collate = functools.partial(custom_collate_fn, device="cpu", allowed_max_length=cfg["context_length"])
train_loader = torch.utils.data.DataLoader(InstructionDataset(data[:9], tokenizer), batch_size=3,
                                           collate_fn=collate, shuffle=False, drop_last=True)
val_loader = torch.utils.data.DataLoader(InstructionDataset(data[9:], tokenizer), batch_size=3,
                                         collate_fn=collate, shuffle=False, drop_last=False)
model = GPTModel(cfg)
load(model, "gpt")
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
results["ch07"] = train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=1, eval_freq=1,
                                     eval_iter=1, start_context="Every effort", tokenizer=tokenizer)
# appendix D: warmup, cosine, clipping
model = GPTModel(cfg)
load(model, "gpt")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
results["appendix_d"] = train_model(model, train_loader, val_loader, optimizer, "cpu", n_epochs=2, eval_freq=1,
                                    eval_iter=1, start_context="Every effort", tokenizer=tokenizer,
                                    warmup_steps=2, initial_lr=1e-5, min_lr=1e-5)
# chapters 6 and appendix E: the classifier, then LoRA
model = GPTModel(cfg)
for param in model.parameters():
    param.requires_grad = False
model.out_head = torch.nn.Linear(in_features=cfg["emb_dim"], out_features=2)
replace_linear_with_lora(model, rank=4, alpha=8)
load(model, "lora")
train = SpamDataset(f"{folder}/train.csv", max_length=None, tokenizer=tokenizer)
val = SpamDataset(f"{folder}/validation.csv", max_length=train.max_length, tokenizer=tokenizer)
train_loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=False, drop_last=True)
val_loader = torch.utils.data.DataLoader(val, batch_size=4, shuffle=False, drop_last=False)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
results["appendix_e"] = train_classifier_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=1,
                                                eval_freq=2, eval_iter=2)
results["appendix_e_trainable"] = trainable
results["appendix_e_accuracy"] = calc_accuracy_loader(val_loader, model, "cpu")
torch.save(model.state_dict(), f"{folder}/lora_classifier.pth")
print("RESULTS " + json.dumps(results))
'''


def test_the_books_functions_in_a_plain_pytorch_script_give_pytorchs_numbers_under_the_runner(tmp_path):
    """The held-out check: one unmodified PyTorch script calling the book's ch06, ch07, appendix D
    and appendix E functions, run by `python -m tinygrad_gpt.torch` and by Python with real torch,
    from the same weights (a safetensors file): the same losses, learning rates, accuracies."""
    import json
    import subprocess
    import sys
    import safetensors.numpy
    from pathlib import Path
    cfg = {**CFG, "context_length": 48}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "instructions.json").write_text(json.dumps(instruction_records(12)))
    spam_csvs(tmp_path)
    torch.manual_seed(1)
    model = real_ch04.GPTModel(cfg)
    safetensors.numpy.save_file({k: v.numpy().copy() for k, v in model.state_dict().items()},
                                str(tmp_path / "gpt.safetensors"))
    cfg_model = real_ch04.GPTModel(cfg)
    cfg_model.out_head = torch.nn.Linear(cfg["emb_dim"], 2)
    real_ape.replace_linear_with_lora(cfg_model, rank=4, alpha=8)
    with torch.no_grad():                                       # B away from zero: LoRA matters from step 0
        for name, p in cfg_model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0.0, 0.02)
    safetensors.numpy.save_file({k: v.numpy().copy() for k, v in cfg_model.state_dict().items()},
                                str(tmp_path / "lora.safetensors"))
    script = tmp_path / "book_chapters.py"
    script.write_text(BOOK_SCRIPT, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    offline = ("import runpy, sys, tiktoken\nfrom tinygrad_gpt.tokenizer import get_gpt2_tokenizer\n"
               "tiktoken.get_encoding = lambda name: get_gpt2_tokenizer()\n"
               "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    real = subprocess.run([sys.executable, "-c", offline, str(script), str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=900)
    (tmp_path / "lora_classifier.pth").rename(tmp_path / "real.pth")
    ours = subprocess.run([sys.executable, "-m", "tinygrad_gpt.torch", str(script), str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert real.returncode == 0, real.stderr[-3000:]
    assert ours.returncode == 0, ours.stderr[-3000:]
    got = json.loads(ours.stdout.split("RESULTS ", 1)[1])
    want = json.loads(real.stdout.split("RESULTS ", 1)[1])
    print("\n" + ours.stdout.split("RESULTS ")[0])
    for key in ("ch07", "appendix_d", "appendix_e"):
        assert len(got[key]) == len(want[key])
        for i, (a, b) in enumerate(zip(got[key], want[key])):
            if not isinstance(b, list):
                assert a == b, (key, i)                                  # examples seen
                continue
            assert len(a) == len(b) >= 1, (key, i)
            np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=f"{key}[{i}]")
    assert got["appendix_d"][3] == want["appendix_d"][3]                 # the learning rates, equal
    assert got["appendix_e"][2:] == want["appendix_e"][2:]               # accuracies, examples seen
    per_block = 4 * (3 * (32 + 32) + (32 + 32) + (32 + 128) + (128 + 32))     # rank 4: A and B of 6 Linears
    assert got["appendix_e_trainable"] == want["appendix_e_trainable"] == 2 * per_block + 4 * (32 + 2) + (64 + 2)
    # (+ the new head's own weight and bias: made after the freezing, so it trains too)
    assert got["appendix_e_accuracy"] == want["appendix_e_accuracy"]
    saved = safetensors.numpy.load_file(str(tmp_path / "lora_classifier.pth"))   # torch.save: safetensors here
    assert "trf_blocks.0.att.W_query.lora.A" in saved and "out_head.linear.weight" in saved
