"""`examples/finetune_classifier.py` and `examples/finetune_instruct.py`: the book's chapters 6
and 7 from the command line, on the engine's own API (tinygrad_gpt.finetune).

    python examples/finetune_classifier.py --init-from ~/models/gpt2 --data train.csv
    python examples/finetune_instruct.py --init-from ~/models/gpt2 --data instruction-data.json --lora 8

--init-from takes a Hugging Face GPT-2 directory (config.json + model.safetensors; see
examples/generate.py --download) or what examples/pretrain.py saved (its --out directory or
a checkpoint). The data is yours: a CSV with Label and Text columns (the book's train.csv)
or a folder with one sub-folder of .txt files per class; a JSON list of instruction / input
/ output records (the book's instruction-data.json). Nothing is downloaded.

--lora RANK trains appendix E's low-rank adapters instead (every weight frozen, A and B
beside each Linear); --warmup-steps, --min-lr and --clip-grad are appendix D's schedule.
The finetuned model is saved with the adapters folded in (W + alpha A B). A mistake in the
arguments or the data: one line on stderr, exit 2, nothing written.
"""
import json
import math
import sys
import time
from pathlib import Path

from .. import fileio
from . import USAGE_ERROR, Formatter, Parser, UsageError, add_runtime_flags, select_kernels, setup_threads


def _common_flags(p, *, epochs, batch_size, lr, eval_freq, eval_iter, data_help):
    p.add_argument("--init-from", metavar="DIR", required=True,
                   help="a Hugging Face GPT-2 directory, or what pretrain.py saved (its --out or a checkpoint)")
    p.add_argument("--data", metavar="PATH", required=True, help=data_help)
    p.add_argument("--out", metavar="DIR", required=True, help="a new (or empty) directory for the results")
    p.add_argument("--epochs", type=int, default=epochs, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=batch_size, help="examples per step")
    p.add_argument("--lr", type=float, default=lr, help="AdamW's (peak) learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled weight decay")
    p.add_argument("--eval-freq", type=int, default=eval_freq, help="evaluate every this many steps")
    p.add_argument("--eval-iter", type=int, default=eval_iter, help="batches per evaluation")
    p.add_argument("--drop-rate", type=float, default=0.0, help="dropout during finetuning (the book's 0.0)")
    p.add_argument("--seed", type=int, default=123, help="the split, the shuffling, the new weights")
    p.add_argument("--lora", metavar="RANK", type=int, default=None,
                   help="train LoRA adapters of this rank instead (appendix E)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA's alpha (default: the rank, as the book)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup from 3e-5 (appendix D)")
    p.add_argument("--min-lr", type=float, default=None, help="cosine decay to this learning rate (appendix D)")
    p.add_argument("--clip-grad", type=float, default=None,
                   help="clip the gradient norm to this after the warmup (appendix D)")
    add_runtime_flags(p, threads_help="BLAS and numba threads (default: all cores)",
                      kernels_help="kernel backend (default: $TINYGRAD_GPT_KERNELS)")


def classifier_parser():
    p = Parser(prog="finetune_classifier.py", formatter_class=Formatter,
               description="Finetune GPT-2 as a classifier of texts, the book's chapter 6 (appendix E's LoRA "
                           "and appendix D's schedule as options).",
               epilog="The book's chapter 6: batch 8, AdamW lr 5e-5, weight decay 0.1, 5 epochs.")
    _common_flags(p, epochs=5, batch_size=8, lr=5e-5, eval_freq=50, eval_iter=5,
                  data_help="a CSV with Label and Text columns (the book's train.csv), or a folder with one "
                            "sub-folder of .txt files per class; split 70/10/20 (train, validation, test)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per text (default: the longest training text, capped by the context)")
    return p


def instruct_parser():
    p = Parser(prog="finetune_instruct.py", formatter_class=Formatter,
               description="Finetune GPT-2 to follow instructions, the book's chapter 7 (appendix E's LoRA and "
                           "appendix D's schedule as options).",
               epilog="The book's chapter 7: batch 8, AdamW lr 5e-5, weight decay 0.1, 2 epochs, "
                      "85/10/5 split, 256 new tokens per response.")
    _common_flags(p, epochs=2, batch_size=8, lr=5e-5, eval_freq=5, eval_iter=5,
                  data_help="a JSON list of instruction / input / output records (the book's "
                            "instruction-data.json); split 85/10/5 in order (train, test, validation)")
    p.add_argument("--allowed-max-length", type=int, default=None,
                   help="cut each batch to this many tokens (default: the model's context length)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="per generated response")
    return p


def check_common(args):
    for flag in ("epochs", "batch_size", "eval_freq", "eval_iter"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.lr > 0 or args.weight_decay < 0:
        raise UsageError("--lr must be positive and --weight-decay at least 0")
    if args.lora is not None and args.lora < 1:
        raise UsageError(f"--lora RANK must be at least 1, got {args.lora}")
    if args.warmup_steps < 0 or (args.min_lr is not None and args.min_lr < 0):
        raise UsageError("--warmup-steps and --min-lr must be at least 0")
    if args.clip_grad is not None and not args.clip_grad > 0:
        raise UsageError(f"--clip-grad must be positive, got {args.clip_grad}")
    if not 0.0 <= args.drop_rate < 1.0:
        raise UsageError(f"--drop-rate must be in [0, 1), got {args.drop_rate}")
    finite = lambda x: x is None or math.isfinite(x)          # noqa: E731
    for flag, value, ok, want in (
            ("--lr", args.lr, finite(args.lr), "a finite number"),
            ("--weight-decay", args.weight_decay, finite(args.weight_decay), "a finite number"),
            ("--min-lr", args.min_lr, finite(args.min_lr) and (args.min_lr is None or args.min_lr <= args.lr),
             "in [0, --lr]"),
            ("--clip-grad", args.clip_grad, finite(args.clip_grad), "a finite number"),
            ("--lora-alpha", args.lora_alpha, args.lora_alpha is None or (finite(args.lora_alpha) and args.lora_alpha > 0),
             "positive"),
            ("--seed", args.seed, 0 <= args.seed < 2 ** 64, "in [0, 2**64)"),
            ("--threads", args.threads, args.threads is None or args.threads >= 1, "at least 1")):
        if not ok:
            raise UsageError(f"{flag} {value} is out of range: it must be {want}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty directory; nothing is overwritten: "
                         f"pass a new directory")
    if not Path(args.init_from).exists():
        raise UsageError(f"--init-from {args.init_from}: no such directory")


def load_start_model(args):
    """The pretrained model, training mode, with the finetuning's dropout."""
    from ..loading import load_model
    try:
        model = load_model(args.init_from)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--init-from {args.init_from}: {e}") from None
    if model.cfg.get("tokenizer", "gpt2") != "gpt2" or model.cfg["vocab_size"] < 50257:
        raise UsageError(f"--init-from {args.init_from}: a model with {model.cfg['vocab_size']} token ids "
                         f"({model.cfg.get('tokenizer', 'gpt2')} tokenizer); finetuning reads text with GPT-2's "
                         f"tokenizer and needs GPT-2's 50257")
    return model.set_drop_rate(args.drop_rate).train()


def optimizer_for(model, args):
    from ..optim import AdamW
    return AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def maybe_lora(model, args):
    from ..finetune import add_lora, trainable_parameters
    before = trainable_parameters(model)
    if args.lora is None:
        return
    alpha = float(args.lora) if args.lora_alpha is None else args.lora_alpha
    add_lora(model, args.lora, alpha)
    print(f"Total trainable parameters before: {before:,}")
    print(f"Total trainable parameters after: {trainable_parameters(model):,} (LoRA rank {args.lora}, "
          f"alpha {alpha:g})", flush=True)


def write_json(path, obj):
    from ..fileio import atomic_write
    atomic_write(path, (json.dumps(obj, indent=4) + "\n").encode("utf-8"))


def prepare_out(args):
    out = Path(args.out)
    try:
        fileio.mkdir(out, parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    return out


def keep(save, out, what):
    """save(out); when the disk refuses, save(d) into a rescue directory (the cache's rescued/,
    else the temporary directory's) and stop with the one line that names it."""
    from .. import rundir
    try:
        save(out)
    except OSError as e:
        where, tried = rundir.rescue(lambda d: save(fileio.mkdir(d, parents=True, exist_ok=True)), out.name)
        head = f"{rundir.failure(e)} while saving {what} in {out}"
        if where is None:
            raise UsageError(f"{head}; it could not be kept anywhere either ({'; '.join(tried)}); "
                             "fix: free some space") from None
        raise UsageError(f"{head}; it is kept in {where}; fix: free some space in {out} and move it there") from None


# ----------------------------------------------------------------------------- chapter 6
def classifier_main(argv=None):
    return _run("finetune_classifier.py", classifier_parser, run_classifier, argv)


def run_classifier(args):
    from .. import finetune as ft
    from ..data import DataError, DataLoader
    from ..lora import merge_lora
    from ..tensor import manual_seed
    from ..tokenizer import get_gpt2_tokenizer
    check_common(args)
    try:
        texts, labels, classes = ft.read_classification_data(args.data)
    except DataError as e:
        raise UsageError(str(e)) from None
    if len(texts) < 3:
        raise UsageError(f"--data {args.data}: {len(texts)} examples; at least 3 are needed (train, validation, test)")
    select_kernels(args.kernels)
    model = load_start_model(args)
    tokenizer = get_gpt2_tokenizer()
    train_idx, val_idx, test_idx = ft.random_split(len(texts), seed=args.seed)
    context = model.cfg["context_length"]
    if args.max_length is not None and not 1 <= args.max_length <= context:
        raise UsageError(f"--max-length must be in [1, {context}] (the model's context), got {args.max_length}")
    pick = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])   # noqa: E731
    longest = max(len(tokenizer.encode(texts[i])) for i in train_idx)
    max_length = args.max_length or min(longest, context)
    train_ds = ft.ClassificationDataset(*pick(train_idx), tokenizer, max_length)
    val_ds = ft.ClassificationDataset(*pick(val_idx), tokenizer, max_length)
    test_ds = ft.ClassificationDataset(*pick(test_idx), tokenizer, max_length)
    if len(train_ds) < args.batch_size:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {len(train_ds)} training examples")
    out = prepare_out(args)

    # ---- from here on the input is valid
    print(setup_threads(args.threads, warm_up=True), flush=True)
    print(f"{len(texts)} examples, classes {classes}; {len(train_ds)} training, {len(val_ds)} validation, "
          f"{len(test_ds)} test; {max_length} tokens each", flush=True)
    manual_seed(args.seed)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True, rng=args.seed)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False, drop_last=False)
    test_loader = DataLoader(test_ds, batch_size=args.batch_size, shuffle=False, drop_last=False)
    ft.as_classifier(model, len(classes))
    maybe_lora(model, args)
    print(f"Trainable parameters: {ft.trainable_parameters(model):,} of "
          f"{sum(p.size for p in model.parameters()):,}", flush=True)
    print(f"Schedule: {ft.lr_schedule_note(args.warmup_steps, args.min_lr, args.clip_grad)}", flush=True)
    start = time.perf_counter()
    result = ft.train_classifier_simple(model, train_loader, val_loader, optimizer_for(model, args), args.epochs,
                                        args.eval_freq, args.eval_iter, warmup_steps=args.warmup_steps,
                                        min_lr=args.min_lr, grad_clip=args.clip_grad)
    print(f"Training completed in {(time.perf_counter() - start) / 60:.2f} minutes.")
    accuracies = {name: ft.calc_accuracy_loader(loader, model)
                  for name, loader in (("Training", train_loader), ("Validation", val_loader), ("Test", test_loader))}
    for name, acc in accuracies.items():
        print(f"{name} accuracy: {acc * 100:.2f}%")
    merge_lora(model)
    keep(lambda d: save_classifier(model, d, classes, max_length, args, result, accuracies), out, "the classifier")
    print(f"Classifier saved to {out} (model.safetensors, config.json)", flush=True)
    return 0


def save_classifier(model, out, classes, max_length, args, result, accuracies):
    """model.safetensors (the book's parameter names; out_head is (classes, emb_dim)) and
    config.json (the book's config, the classes, the text length, the run's numbers)."""
    from ..fileio import atomic_replace, save_safetensors, write_checksums
    with atomic_replace(out / "model.safetensors") as tmp:        # a full disk: OSError with its errno
        save_safetensors({n: p.data for n, p in model.named_parameters()}, tmp, metadata={"format": "np"})
    train_losses, val_losses, train_accs, val_accs, examples_seen = result
    write_json(out / "config.json", {
        "model_config": model.cfg, "classes": classes, "max_length": max_length, "pad_token_id": 50256,
        "finetune": {k: getattr(args, k) for k in ("init_from", "data", "epochs", "batch_size", "lr",
                                                   "weight_decay", "lora", "lora_alpha", "warmup_steps",
                                                   "min_lr", "clip_grad", "seed")},
        "train_losses": train_losses, "val_losses": val_losses, "train_accs": train_accs, "val_accs": val_accs,
        "examples_seen": examples_seen, "accuracy": {k.lower(): v for k, v in accuracies.items()}})
    write_checksums(out, ("model.safetensors", "config.json"))    # loading verifies them, as a pretrain run's


# ----------------------------------------------------------------------------- chapter 7
def instruct_main(argv=None):
    return _run("finetune_instruct.py", instruct_parser, run_instruct, argv)


def run_instruct(args):
    from .. import finetune as ft
    from ..data import DataError
    from ..lora import merge_lora
    from ..pretrained import save_pretrained
    from ..tensor import manual_seed
    from ..tokenizer import get_gpt2_tokenizer
    from ..train import TrainConfig, train_model
    check_common(args)
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be at least 0, got {args.max_new_tokens}")
    try:
        data = ft.read_instruction_data(args.data)
    except DataError as e:
        raise UsageError(str(e)) from None
    train_data, test_data, val_data = ft.split_instruction_data(data)
    if not train_data or not val_data:
        raise UsageError(f"--data {args.data}: {len(data)} records give {len(train_data)} for training and "
                         f"{len(val_data)} for validation (85/10/5); at least one of each is needed")
    if len(train_data) < args.batch_size:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {len(train_data)} training records")
    select_kernels(args.kernels)
    model = load_start_model(args)
    context = model.cfg["context_length"]
    allowed = args.allowed_max_length or context
    if not 1 <= allowed <= context:
        raise UsageError(f"--allowed-max-length must be in [1, {context}] (the model's context), got {allowed}")
    tokenizer = get_gpt2_tokenizer()
    out = prepare_out(args)

    # ---- from here on the input is valid
    print(setup_threads(args.threads, warm_up=True), flush=True)
    print(f"Training set length: {len(train_data)}\nValidation set length: {len(val_data)}\n"
          f"Test set length: {len(test_data)}", flush=True)
    manual_seed(args.seed)
    train_loader = ft.instruction_loader(train_data, tokenizer, args.batch_size, True, True, allowed, args.seed)
    val_loader = ft.instruction_loader(val_data, tokenizer, args.batch_size, False, False, allowed)
    freeze_nothing = args.lora is None
    if not freeze_nothing:
        maybe_lora(model, args)
    print(f"Trainable parameters: {ft.trainable_parameters(model):,} of "
          f"{sum(p.size for p in model.parameters()):,}", flush=True)
    print(f"Schedule: {ft.lr_schedule_note(args.warmup_steps, args.min_lr, args.clip_grad)}", flush=True)
    start = time.perf_counter()
    config = TrainConfig(num_epochs=args.epochs, eval_freq=args.eval_freq, eval_iter=args.eval_iter,
                         start_context=ft.format_input(val_data[0]), warmup_steps=args.warmup_steps,
                         min_lr=args.min_lr, grad_clip=args.clip_grad)
    state = train_model(model, train_loader, val_loader, optimizer_for(model, args), tokenizer, config)
    print(f"Training completed in {(time.perf_counter() - start) / 60:.2f} minutes.")
    merge_lora(model)
    responses = ft.generate_responses(model, val_data, tokenizer, args.max_new_tokens)
    for entry in responses[:3]:
        print(f"{ft.format_input(entry)}\n\nCorrect response:\n>> {entry['output']}\n\n"
              f"Model response:\n>> {entry['model_response'].strip()}\n{'-' * 40}")
    model.eval()

    def save(d):                                  # the model first: what the run was for
        save_pretrained(model, d / "model")
        write_json(d / "instruction-data-with-response.json", responses)
        write_json(d / "losses.json", {"train_losses": state.train_losses, "val_losses": state.val_losses,
                                       "tokens_seen": state.track_tokens_seen})
    keep(save, out, "the model and the responses")
    print(f"Responses for the {len(responses)} validation records saved to "
          f"{out / 'instruction-data-with-response.json'}")
    print(f"Model saved to {out / 'model'}; generate with: python examples/generate.py --checkpoint "
          f"{out / 'model'} --prompt ...", flush=True)
    return 0


def _run(prog, parser, run, argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(argv)
        return run(args)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
