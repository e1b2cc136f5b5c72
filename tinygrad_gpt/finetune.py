"""Finetuning, the book's chapters 6 and 7, with appendix D's schedule and appendix E's LoRA.

Chapter 6 turns a pretrained GPT into a classifier: every parameter frozen, a new output
head of `num_classes` rows, the last transformer block and the final norm trainable again;
the logits of the last token decide. Chapter 7 finetunes it on instructions: the book's
prompt format (Alpaca's), batches padded with <|endoftext|> and every padding target but
the first set to -100, which cross_entropy ignores. Both train with the book's loops, under
the book's names; a frozen parameter costs nothing in backward (no gradient is computed for
it) and AdamW skips it. The commands are cli/finetune.py (examples/finetune_*.py).
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np

from . import functional as F
from .data import DataError, DataLoader
from .generation import generate
from .lora import replace_linear_with_lora
from .model import GPTModel
from .nn import Linear
from .optim import clip_grad_norm_, lr_at_step
from .pretrained import SafetensorsReader
from .tensor import no_grad
from . import train
from .tokenizer import text_to_token_ids, token_ids_to_text

PAD_TOKEN_ID = 50256                    # <|endoftext|>, the book's padding token
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- freezing, LoRA
def trainable_parameters(model):
    return sum(p.size for p in model.parameters() if p.requires_grad)


def freeze(model):
    for p in model.parameters():
        p.requires_grad = False
    return model


def as_classifier(model, num_classes, rng=None):
    """Chapter 6's surgery: freeze everything, a new head (num_classes, emb_dim), then the
    last transformer block and the final layer norm trainable again."""
    freeze(model)
    model.out_head = Linear(model.cfg["emb_dim"], num_classes)
    for p in model.trf_blocks[-1].parameters():
        p.requires_grad = True
    for p in model.final_norm.parameters():
        p.requires_grad = True
    return model


def add_lora(model, rank, alpha):
    """Appendix E: freeze every parameter, then wrap every Linear (the new head included) in
    a LinearWithLoRA: only the A and B matrices train."""
    freeze(model)
    return replace_linear_with_lora(model, rank, alpha)


# ----------------------------------------------------------------------------- chapter 6: data
def read_classification_data(path):
    """(texts, labels, class names) from a CSV with Label and Text columns (the book's
    train.csv), or from a folder with one sub-folder of .txt files per class. Labels that
    are all 0 and 1 are kept; other labels are numbered in sorted order."""
    path = Path(path)
    if path.is_dir():
        classes = sorted(d.name for d in path.iterdir() if d.is_dir())
        texts, labels = [], []
        for i, name in enumerate(classes):
            for f in sorted((path / name).glob("*.txt")):
                texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
                labels.append(i)
        if len(classes) < 2 or len(set(labels)) < 2:
            raise DataError(f"{path}: a folder of examples needs at least two sub-folders (one per class) "
                            f"holding .txt files; found {len(classes)} with files in {len(set(labels))}")
        return texts, labels, classes
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    if not rows or not {"Label", "Text"} <= set(rows[0]):
        raise DataError(f"{path}: expected a CSV with a header row naming the columns Label and Text "
                        f"(as the book's train.csv), found {list(rows[0]) if rows else 'no rows'}")
    raw = [r["Label"].strip() for r in rows]
    texts = [r["Text"] or "" for r in rows]
    names = sorted(set(raw))
    if set(raw) <= {"0", "1"}:
        names = ["0", "1"]
    if len(set(raw)) < 2:
        raise DataError(f"{path}: the Label column has one value ({names[0]!r}); a classifier needs two or more")
    return texts, [names.index(x) for x in raw], names


def random_split(n, train_frac=0.7, validation_frac=0.1, seed=123):
    """Index arrays (train, validation, test) of a shuffled range(n), the book's 70/10/20."""
    order = np.random.default_rng(seed).permutation(n)
    train_end = int(n * train_frac)
    val_end = train_end + int(n * validation_frac)
    return order[:train_end], order[train_end:val_end], order[val_end:]


class ClassificationDataset:
    """The book's SpamDataset: texts encoded, cut to max_length (the longest text when None),
    padded with <|endoftext|> to it. dataset[idx] gives (B, T) token ids and (B,) labels."""

    def __init__(self, texts, labels, tokenizer, max_length=None, pad_token_id=PAD_TOKEN_ID):
        encoded = [tokenizer.encode(t) for t in texts]
        self.max_length = max(len(e) for e in encoded) if max_length is None else max_length
        self.ids = np.full((len(encoded), self.max_length), pad_token_id, dtype=np.int64)   # (n, T)
        for i, e in enumerate(encoded):
            e = e[:self.max_length]
            self.ids[i, :len(e)] = e
        self.labels = np.asarray(labels, dtype=np.int64)                                      # (n,)

    def __getitem__(self, idx):
        return self.ids[idx], self.labels[idx]

    def __len__(self):
        return len(self.labels)


# ----------------------------------------------------------------------------- chapter 6: the loop
def classifier_logits(model, input_batch):
    """The logits of the last token, (B, num_classes): the head runs on that position only."""
    return model(input_batch, last_only=True)[:, -1, :]


def calc_loss_batch(input_batch, target_batch, model):
    return F.cross_entropy(classifier_logits(model, input_batch), target_batch)


def calc_loss_loader(data_loader, model, num_batches=None):
    return train.calc_loss_loader(data_loader, model, num_batches=num_batches, loss_batch=calc_loss_batch)


def calc_accuracy_loader(data_loader, model, num_batches=None):
    """The share of examples whose largest logit is their label (the book's, in eval mode)."""
    model.eval()
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    correct = seen = 0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        with no_grad():
            predicted = classifier_logits(model, input_batch).data.argmax(axis=-1)   # (B,)
        seen += len(predicted)
        correct += int((predicted == np.asarray(target_batch)).sum())
    return correct / seen if seen else float("nan")


def evaluate_model(model, train_loader, val_loader, eval_iter):
    """The book's ch06 evaluate_model: train.evaluate_model with the classifier's loss."""
    return train.evaluate_model(model, train_loader, val_loader, eval_iter=eval_iter, loss_batch=calc_loss_batch)


def train_classifier_simple(model, train_loader, val_loader, optimizer, num_epochs, eval_freq, eval_iter,
                            warmup_steps=0, min_lr=None, grad_clip=None, file=None):
    """The book's train_classifier_simple, with appendix D's options (off by default): linear
    warmup from 3e-5, cosine decay to min_lr, clipping the global gradient norm from the end of
    warmup on. Returns train_losses, val_losses, train_accs, val_accs, examples_seen."""
    file = sys.stdout if file is None else file
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    peak_lr = optimizer.param_groups[0]["lr"]
    total_steps = num_epochs * len(train_loader)
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            global_step += 1
            if warmup_steps or min_lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at_step(global_step, peak_lr, total_steps, warmup_steps, min_lr)
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model)
            loss.backward()
            if grad_clip is not None and global_step >= warmup_steps:
                clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            examples_seen += len(input_batch)
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}", file=file, flush=True)
        train_accuracy = calc_accuracy_loader(train_loader, model, num_batches=eval_iter)
        val_accuracy = calc_accuracy_loader(val_loader, model, num_batches=eval_iter)
        print(f"Training accuracy: {train_accuracy * 100:.2f}% | Validation accuracy: {val_accuracy * 100:.2f}%",
              file=file, flush=True)
        train_accs.append(train_accuracy)
        val_accs.append(val_accuracy)
    return train_losses, val_losses, train_accs, val_accs, examples_seen


# ----------------------------------------------------------------------------- chapter 7
def format_input(entry):
    """The book's (Alpaca's) prompt: the instruction, then the input if there is one."""
    instruction_text = ("Below is an instruction that describes a task. "
                        "Write a response that appropriately completes the request."
                        f"\n\n### Instruction:\n{entry['instruction']}")
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def read_instruction_data(path):
    """The book's instruction-data.json: a list of {"instruction", "input", "output"} records."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    keys = {"instruction", "input", "output"}
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a JSON list of records with {', '.join(sorted(keys))}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not keys <= set(entry) or \
                not all(isinstance(entry[k], str) for k in keys):
            raise DataError(f"{path}: record {i} is not an object with the string fields "
                            f"{', '.join(sorted(keys))}")
    return data


def split_instruction_data(data, train_frac=0.85, test_frac=0.1):
    """The book's split, in order (no shuffling): 85% train, 10% test, the rest validation."""
    train_end = int(len(data) * train_frac)
    test_end = train_end + int(len(data) * test_frac)
    return data[:train_end], data[train_end:test_end], data[test_end:]


def custom_collate_fn(batch, pad_token_id=PAD_TOKEN_ID, ignore_index=IGNORE_INDEX, allowed_max_length=None):
    """The book's collate: each sequence gets one <|endoftext|> and is padded with it to the
    longest + 1; inputs drop the last token, targets the first (shifted by one); every padding
    target but the first becomes ignore_index. Returns (B, T) int64 inputs and targets."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs = np.full((len(batch), batch_max_length - 1), pad_token_id, dtype=np.int64)   # (B, T)
    targets = np.full((len(batch), batch_max_length - 1), pad_token_id, dtype=np.int64)  # (B, T)
    for i, item in enumerate(batch):
        padded = list(item) + [pad_token_id] * (batch_max_length - len(item))
        inputs[i] = padded[:-1]
        targets[i] = padded[1:]
        pads = np.flatnonzero(targets[i] == pad_token_id)
        targets[i, pads[1:]] = ignore_index                # keep the first: the model learns to stop
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


class InstructionDataset:
    """The book's InstructionDataset: each record's prompt and response, encoded once.
    dataset[idx] (an array of indices) gives the collated batch, so that the engine's
    DataLoader (and train.train_model) use it as they use the pretraining data."""

    def __init__(self, data, tokenizer, allowed_max_length=None):
        self.data, self.allowed_max_length = data, allowed_max_length
        self.encoded_texts = [tokenizer.encode(format_input(entry) + f"\n\n### Response:\n{entry['output']}")
                              for entry in data]

    def __getitem__(self, idx):
        return custom_collate_fn([self.encoded_texts[i] for i in np.atleast_1d(idx)],
                                 allowed_max_length=self.allowed_max_length)

    def __len__(self):
        return len(self.data)


def instruction_loader(data, tokenizer, batch_size, shuffle, drop_last, allowed_max_length, seed=None):
    return DataLoader(InstructionDataset(data, tokenizer, allowed_max_length), batch_size=batch_size,
                      shuffle=shuffle, drop_last=drop_last, rng=seed)


def generate_response(model, entry, tokenizer, max_new_tokens=256):
    """The book's: generate greedily after the prompt until <|endoftext|>, keep the response."""
    input_text = format_input(entry)
    context = model.pos_emb.weight.shape[0]
    ids = text_to_token_ids(input_text, tokenizer)[:, -context:]
    token_ids = generate(model, ids, max_new_tokens=max_new_tokens, context_size=context, eos_id=PAD_TOKEN_ID)
    generated_text = token_ids_to_text(token_ids, tokenizer)
    return generated_text[len(token_ids_to_text(ids, tokenizer)):].replace("### Response:", "").strip()


def generate_responses(model, entries, tokenizer, max_new_tokens=256):
    """Each record with the book's "model_response" field added (copies; the input untouched)."""
    model.eval()
    return [{**entry, "model_response": generate_response(model, entry, tokenizer, max_new_tokens)}
            for entry in entries]


def lr_schedule_note(warmup_steps, min_lr, grad_clip):
    parts = []
    if warmup_steps:
        parts.append(f"linear warmup over {warmup_steps} steps from 3e-05")
    if min_lr is not None:
        parts.append(f"cosine decay to {min_lr:g}")
    if grad_clip is not None:
        parts.append(f"gradient norm clipped at {grad_clip:g}" + (" after the warmup" if warmup_steps else ""))
    return "; ".join(parts) if parts else "constant learning rate"


# ----------------------------------------------------------------------------- the saved classifier
def load_classifier(directory):
    """A classifier finetune_classifier.py saved (model.safetensors + config.json): the model
    in eval mode, its class names and its text length."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model = as_classifier(GPTModel(config["model_config"]), len(config["classes"]))
    with SafetensorsReader(directory / "model.safetensors") as f:
        tensors = {k: f.get(k) for k in f.keys}
    model.load_state_dict(tensors)
    return model.eval(), config["classes"], config["max_length"]
