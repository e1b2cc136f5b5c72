"""The explain command: parse the flags, take one batch of text, trace, print, draw.

--values prints the arrays (meant for --model micro, where every gradient fits on a few
lines; rows at the terminal's width under their column indices; what forward saved for each
backward; each array once), --op / --module list only some ops, --worked OP works one row of
an op's backward by hand (worked.py), --optimizer runs one AdamW step after it and shows each
parameter's (optimizer.py; --worked AdamW: one weight's), --break MODE compares a correct
backward with a sabotaged one (sabotage.py), --use-op FILE.py:CLASS puts the learner's own op in
the model and compares, then trains (use_op.py), --step pauses after each op until Enter (q
stops backward there), --html writes the graph as one page (render_html.py), with the values
and the --param chain when given.
--finetune classifier and --lora RANK trace the book's finetuned models (chapter 6, appendix
E; finetune.as_classifier and finetune.add_lora): which parameters receive gradients, and
that none is computed for the frozen ones.
--checkpoint DIR traces a model trained here (loading.load_model) instead of --model's random
weights, with its own shape and vocabulary (a --tokenizer char run's characters).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import sys

import numpy as np

from ..cli import USAGE_ERROR, UsageError  # noqa: F401
from ..data import DataError, load_text, one_batch
from . import render_dot
from .render_dot import write_dot
from .render_text import MAX_PRINTED, Listing, chain_lines, fit, totals
from .trace import chain, trace_backward
from .worked import WORKED

DESCRIPTION = "Watch backpropagation run: every op of one backward pass through GPT-2, as it happens."


# ----------------------------------------------------------------------------- the command line
def _drop_rates():
    """'0.1; micro: 0.0': each config's dropout, the usual one first, the others by name."""
    from collections import Counter

    from ..model import CONFIGS
    rates = {name: cfg["drop_rate"] for name, cfg in CONFIGS.items()}
    usual = Counter(rates.values()).most_common(1)[0][0]
    return "; ".join([f"{usual}"] + [f"{name}: {r}" for name, r in rates.items() if r != usual])


def build_parser():
    p = argparse.ArgumentParser(prog="explain_backward.py", description=DESCRIPTION)
    p.add_argument("--model", default=None,
                   help="tiny (default), micro (every array printable), 124M, 355M, 774M or 1558M")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="instead of --model's random weights, a model trained here (pretrain.py's --out, "
                        "--save-dir or one step directory): its weights, shape and vocabulary (a --tokenizer "
                        "char run reads its text's characters: pass that text as --data)")
    p.add_argument("--context-length", type=int, default=None,
                   help="tokens per row of the batch (default: 32 for tiny, 8 for micro, else 256, "
                        "at most the model's context length)")
    p.add_argument("--batch-size", type=int, default=1, help="rows in the batch (default: 1)")
    p.add_argument("--data", default=None,
                   help="a UTF-8 text file (default: the-verdict.txt if cached, else the bundled sample; "
                        "micro: its own sentence)")
    p.add_argument("--drop-rate", type=float, default=None, help=f"dropout (default: the model's own, {_drop_rates()})")
    p.add_argument("--seed", type=int, default=123, help="initialisation and dropout seed (default: 123)")
    p.add_argument("--kernels", choices=["numpy", "numba"], default="numpy",
                   help="kernel backend (default: numpy, kernels/reference.py: the readable one)")
    p.add_argument("--param", default=None, metavar="NAME",
                   help="follow one parameter: the chain of ops from the loss down to it")
    p.add_argument("--values", action="store_true",
                   help=f"print each op's dL/d(output) and the gradient it returns for each input as arrays "
                        f"(norms only for arrays of more than {MAX_PRINTED} numbers; try --model micro)")
    p.add_argument("--op", default=None, metavar="NAME",
                   help="list only the ops of this kind (LayerNorm, Attention, Linear, ...); the totals count all")
    p.add_argument("--module", default=None, metavar="NAME",
                   help="list only the ops made in this module or inside it (final_norm, trf_blocks.0.att, ...)")
    p.add_argument("--worked", default=None, metavar="OP", choices=list(WORKED) + ["AdamW"],
                   help="with --values (or --html: in the op's side panel): the first such op's backward formula "
                        "(docs/backward.md) with one row's numbers substituted, to check on a calculator "
                        f"({', '.join(WORKED)}); AdamW: one weight's optimizer step (implies --optimizer)")
    p.add_argument("--optimizer", action="store_true",
                   help="after backward, one AdamW step (optim.AdamW): per parameter g, m, v, m̂, v̂ and the update, "
                        "checked against kernels/reference.py's adamw_step (with --values: every element)")
    p.add_argument("--lr", type=float, default=None,
                   help="--optimizer's learning rate (default: the book's 0.0004; with --train-steps, the "
                        "notebook's 0.01)")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="--optimizer's weight decay (default: the book's 0.1)")
    p.add_argument("--use-op", default=None, metavar="FILE.py:CLASS",
                   help="your own Function subclass, named after the engine op it replaces (LayerNorm, GELU, "
                        "Softmax, ...), in the model in its place: compared op by op with the engine's (first "
                        "departure, gradcheck of that op); with --train-steps N, micro trained N steps with it "
                        "beside the engine's own run")
    p.add_argument("--train-steps", type=int, default=None, metavar="N",
                   help="with --use-op: train N AdamW steps with your op and with the engine's, both loss curves")
    p.add_argument("--step", action="store_true",
                   help="pause after each op of backward: Enter goes on, q stops")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write the backward graph as one self-contained HTML page (values for small "
                        "models, the --param chain highlighted)")
    p.add_argument("--depth", type=int, default=None, metavar="N",
                   help="list only the N ops nearest the loss (the first N that backward runs, "
                        "the last N of the forward); the totals still count them all")
    p.add_argument("--dot", default=None, metavar="FILE",
                   help="write the computation graph in Graphviz DOT (and FILE.png if `dot` is installed)")
    p.add_argument("--expand", action=argparse.BooleanOptionalAction, default=None,
                   help=f"--dot: draw every op of every block (default: when there are at most "
                        f"{render_dot.EXPAND_AT_MOST_OPS} ops, as in the tiny model; else one node per block)")
    p.add_argument("--break", dest="break_mode", default=None, metavar="MODE",
                   choices=["layernorm-mean", "embedding-assign", "attention-scale", "none"],
                   help="run backward twice, correct and with one op's backward sabotaged (layernorm-mean, "
                        "embedding-assign, attention-scale; none: a correct one), compare them op by op and "
                        "name the first op where they part, then gradcheck it (explain/sabotage.py)")
    p.add_argument("--finetune", default=None, choices=["classifier"],
                   help="classifier: chapter 6's model, a 2-class head on the last token, every parameter "
                        "frozen but the last block, the final norm and the head (made-up labels: row i is class i %% 2)")
    p.add_argument("--lora", type=int, default=None, metavar="RANK",
                   help="appendix E: a LoRA adapter of this rank (alpha = RANK, as the book) beside every "
                        "Linear, every other parameter frozen; with --finetune classifier, the book's appendix E")
    p.add_argument("--book", action="store_true",
                   help="trace the book's own llms_from_scratch.ch04.GPTModel run on the engine "
                        "(tinygrad_gpt.torch; needs the llms-from-scratch package), named by its modules")
    return p


def check_args(args):
    """The flags checked, with --model's and --context-length's defaults settled: a new
    Namespace (the parsed one is not written). With --checkpoint, the context length is
    checked against the model once it is loaded (checkpoint_model)."""
    from ..model import CONFIGS
    args = argparse.Namespace(**{"checkpoint": None, **vars(args)})
    if args.checkpoint is not None:
        for flag, given, why in (("--model", args.model is not None, "random weights of a named model"),
                                 ("--book", args.book, "the book's model, with random weights"),
                                 ("--use-op", args.use_op is not None, "it trains new models from --model's config")):
            if given:
                raise UsageError(f"--checkpoint {args.checkpoint} traces that trained model, {flag} another "
                                 f"({why}): leave out one of them")
    else:
        args = argparse.Namespace(**{**vars(args), "model": args.model or "tiny"})
        if args.model not in CONFIGS:
            raise UsageError(f"unknown --model {args.model!r}; choose one of {', '.join(CONFIGS)}")
        limit = CONFIGS[args.model]["context_length"]
        if args.context_length is None:
            default = min(32 if args.model == "tiny" else 256, limit)                # micro: its 8
            args = argparse.Namespace(**{**vars(args), "context_length": default})
        if not 1 <= args.context_length <= limit:
            raise UsageError(f"--context-length {args.context_length} must be in [1, {limit}] for {args.model}")
    if args.context_length is not None and args.context_length < 1:
        raise UsageError(f"--context-length {args.context_length} must be at least 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    if args.depth is not None and args.depth < 0:
        raise UsageError(f"--depth {args.depth} must be at least 0")
    if args.drop_rate is not None and not 0 <= args.drop_rate < 1:
        raise UsageError(f"--drop-rate {args.drop_rate} must be in [0, 1)")
    if args.lora is not None and args.lora < 1:
        raise UsageError(f"--lora RANK must be at least 1, got {args.lora}")
    if args.book and (args.optimizer or args.worked == "AdamW"):
        raise UsageError("--optimizer runs on this package's own models: leave out --book")
    if args.book and (args.finetune or args.lora is not None):
        raise UsageError("--book traces the book's chapter-4 model as it is: leave out --finetune and --lora")
    if args.worked == "AdamW":
        args = argparse.Namespace(**{**vars(args), "optimizer": True})
    if args.lr is None and (args.optimizer or args.train_steps):     # else unused, and left as given
        args = argparse.Namespace(**{**vars(args), "lr": 1e-2 if args.train_steps else 4e-4})
    if (args.lr is not None and args.lr < 0) or args.weight_decay < 0:
        raise UsageError(f"--lr {args.lr} and --weight-decay {args.weight_decay} must be at least 0")
    if args.train_steps is not None and args.use_op is None:
        raise UsageError("--train-steps trains with your op beside the engine's: give --use-op FILE.py:CLASS")
    if args.train_steps is not None and args.train_steps < 1:
        raise UsageError(f"--train-steps {args.train_steps} must be at least 1")
    if args.use_op is not None:
        if args.book or args.values or args.step or args.html or args.dot or args.param or args.op \
                or args.module or args.finetune or args.lora is not None or args.break_mode is not None \
                or args.optimizer or args.worked:
            raise UsageError("--use-op takes --model, --context-length, --batch-size, --data, --seed, --kernels, "
                             "--lr and --train-steps only")
        if args.drop_rate:
            raise UsageError("--use-op runs without dropout (both runs must see the same forward): "
                             "leave out --drop-rate")
        args = argparse.Namespace(**{**vars(args), "drop_rate": 0.0})
    if args.worked not in (None, "AdamW") and not (args.values or args.html):
        raise UsageError("--worked works with --values or --html (it shows one row of the op's arrays): add --values")
    if args.break_mode is not None:
        if args.drop_rate:
            raise UsageError("--break runs without dropout (both backwards must see the same forward): "
                             "leave out --drop-rate")
        if args.book or args.values or args.step or args.html or args.dot or args.param or args.op or args.module \
                or args.finetune or args.lora is not None or args.optimizer:
            raise UsageError("--break takes --model, --context-length, --batch-size, --data, --seed and "
                             "--kernels only")
        args = argparse.Namespace(**{**vars(args), "drop_rate": 0.0})
    return args


def main(argv=None, file=None, stdin=None):
    try:
        return run(build_parser().parse_args(argv), file=file, stdin=stdin)
    except UsageError as e:
        print(f"explain_backward.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except ValueError as e:                          # book.py's BookError: the command says it in one line
        from .book import BookError
        if not isinstance(e, BookError):
            raise
        print(f"explain_backward.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:                          # `... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run(args, file=None, stdin=None):
    args = check_args(args)
    if args.book:                                    # the book's model: tinygrad_gpt/explain/book.py
        from .book import run_book
        return run_book(args, vars(build_parser().parse_args([])), file=file)
    from ..kernels import use
    from ..model import GPTModel, get_config
    from ..tensor import manual_seed
    from ..tokenizer import tokenizer_for
    out = sys.stdout if file is None else file

    trained = None
    if args.checkpoint is not None:                  # its config: shape, tokenizer, a char run's alphabet
        trained, args = checkpoint_model(args)
        cfg = dict(trained.cfg)
    else:
        cfg = get_config(args.model)
    try:
        text, description = load_text(args.data, cfg, download=False)   # micro: its own sentence
    except DataError as e:
        raise UsageError(str(e)) from None
    try:
        tokenizer = tokenizer_for(cfg)               # GPT-2's BPE, or a character model's characters
        x, y = one_batch(text, tokenizer, args.batch_size, args.context_length)
    except DataError as e:                           # a text too short for the batch
        raise UsageError(str(e)) from None
    except ValueError as e:                          # a character the model's vocabulary does not have
        fix = ""
        if cfg.get("tokenizer") == "char":
            fix = ("; fix: pass --data with the text it was trained on" if "alphabet" in cfg
                   else "; fix: leave out --data (micro reads its own sentence)")
        raise UsageError(f"--data {args.data or '(the default text)'}: {e}{fix}") from None
    if args.drop_rate is not None:
        cfg["drop_rate"] = args.drop_rate
    manual_seed(args.seed)
    if trained is not None:                          # the trained weights; only dropout may change
        model = trained.set_drop_rate(cfg["drop_rate"])
    else:
        cfg["context_length"] = args.context_length  # a random model's positional table: just the batch's
        model = GPTModel(cfg)
    model = finetuned(model.train(), args)
    if args.finetune == "classifier":                # chapter 6: one label a row, made up
        y = np.arange(args.batch_size) % 2           # (B,)
    names = [name for name, _ in model.named_parameters()]
    check_filters(args, model)
    if args.param is not None and args.param not in names:
        close = difflib.get_close_matches(args.param, names, n=3, cutoff=0.5)
        raise UsageError(f"--param {args.param!r} is not a parameter of the {args.model} model"
                         + (f"; did you mean {', '.join(close)}?" if close else f"; e.g. {names[2]}"))
    if args.param is not None and not dict(model.named_parameters())[args.param].requires_grad:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        raise UsageError(f"--param {args.param} is frozen: no gradient reaches it, so no chain leads to it; "
                         f"follow a trainable one, e.g. {trainable[0]}")

    with use(args.kernels):                          # in-process callers (tests) keep theirs
        if args.use_op is not None:                  # explain/use_op.py: the learner's op in the model
            from .use_op import UseOpError, report_use_op
            try:
                return report_use_op(args, out, cfg, x, y, description)
            except UseOpError as e:
                raise UsageError(str(e)) from None
        if args.break_mode is not None:              # explain/sabotage.py: two backwards compared
            from .sabotage import report_break
            print(description, file=out)
            report_break(args, out, model, x, y)
            return 0
        report(args, out, model, cfg, description, tokenizer, x, y, stdin=stdin)
    return 0


def checkpoint_model(args):
    """--checkpoint: the trained model (loading.load_model: any of pretrain.py's layouts, its
    files verified) and the args with --context-length settled within the model's and --model
    set to the directory's name, for the listing's title. A bad directory is one line, exit 2."""
    from ..loading import load_model
    try:
        model = load_model(args.checkpoint)
    except (OSError, ValueError, KeyError) as e:   # WeightsError, ChecksumError, FileNotFoundError
        why = str(e).strip("'\"")                   # a KeyError's message comes quoted
        raise UsageError(f"--checkpoint: {why}") from None
    limit = model.cfg["context_length"]
    context_length = min(256, limit) if args.context_length is None else args.context_length
    if context_length > limit:
        raise UsageError(f"--context-length {context_length} is above the context length of the model in "
                         f"{args.checkpoint} ({limit}); use at most {limit}")
    return model, argparse.Namespace(**{**vars(args), "context_length": context_length,
                                        "model": str(args.checkpoint)})


def finetuned(model, args):
    """The model as the book finetunes it (the library's own surgery, tinygrad_gpt/finetune.py):
    --finetune classifier is chapter 6's as_classifier (2 classes), --lora RANK appendix E's
    add_lora (alpha = RANK), both: appendix E's LoRA classifier. Else the model as it is."""
    from ..finetune import add_lora, as_classifier
    if getattr(args, "finetune", None) == "classifier":
        as_classifier(model, 2)
    if getattr(args, "lora", None) is not None:
        add_lora(model, args.lora, alpha=float(args.lora))
    return model


def finetune_lines(args, model):
    """What --finetune / --lora did to the model, and how much of it trains."""
    lines = []
    args = argparse.Namespace(**{"finetune": None, "lora": None, **vars(args)})
    if args.finetune == "classifier" and args.lora is None:
        last = f"trf_blocks.{len(model.trf_blocks) - 1}"
        lines.append(f"chapter 6's classifier: out_head is a new Linear({model.cfg['emb_dim']}, 2) read at the last "
                     f"token; every parameter frozen but {last}, final_norm and out_head")
    elif args.finetune == "classifier":
        lines.append(f"appendix E's LoRA classifier: out_head a new Linear({model.cfg['emb_dim']}, 2) read at the last "
                     f"token, a rank-{args.lora} adapter (alpha {args.lora}) beside every Linear, every other parameter frozen")
    elif args.lora is not None:
        lines.append(f"appendix E's LoRA: a rank-{args.lora} adapter (alpha {args.lora}) beside every Linear, "
                     "every other parameter frozen")
    if not lines:
        return lines
    params = list(model.named_parameters())
    n_train = sum(p.size for _, p in params if p.requires_grad)
    t_train = sum(1 for _, p in params if p.requires_grad)
    lines.append(f"trainable: {t_train} of {len(params)} tensors, {n_train:,} of {model.num_parameters():,} "
                 f"numbers ({100 * n_train / model.num_parameters():.2f}%); the frozen ones have requires_grad False")
    if args.lora is not None:
        lines.append("LoRA's B starts at zero (the adapted model starts as the model it adapts), so on this "
                     "first backward A's gradient is zero: dA = alpha x^T (dy B^T)")
    if args.finetune == "classifier":
        labels = ", ".join(f"row {i}: class {i % 2}" for i in range(min(args.batch_size, 4)))
        lines.append(f"made-up labels ({labels}{', ...' if args.batch_size > 4 else ''}): the trace shows where "
                     "the gradients go, not what is learned")
    return lines


def check_filters(args, model):
    """--op and --module must name something the model has, else a one-line error with the choices."""
    from ..tensor import Function
    if args.op is not None:
        kinds, todo = set(), [Function]
        while todo:
            for sub in todo.pop().__subclasses__():
                kinds.add(sub.__name__)
                todo.append(sub)
        if args.op.lower() not in {k.lower() for k in kinds}:
            close = difflib.get_close_matches(args.op, sorted(kinds), n=3)
            raise UsageError(f"--op {args.op!r} is not an op of the engine"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))
    if args.module is not None:
        modules = [name for name, _ in model.named_modules() if name] + ["loss"]
        if getattr(args, "finetune", None) == "classifier":
            modules.append("classifier_logits")      # the last token's logits, taken outside the model
        if args.module not in modules:
            close = difflib.get_close_matches(args.module, modules, n=3, cutoff=0.5)
            raise UsageError(f"--module {args.module!r} is not a module of the {args.model} model"
                             + (f"; did you mean {', '.join(close)}?" if close else f"; e.g. {modules[0]}"))


class StopBackward(Exception):
    """--step: the user typed q. Raised from the listing's hook, it ends backward there."""


def pauser(out, stdin):
    """--step: after each op, wait for a line on stdin; q (or quit) stops, end of input stops
    pausing and lets backward run to the end."""
    state = {"eof": False}

    def pause(op):
        if state["eof"]:
            return
        print(f"[step {op.step}] Enter: next op, q: stop > ", end="", file=out, flush=True)
        source = sys.stdin if stdin is None else stdin
        line = source.readline()
        if line.strip().lower() in ("q", "quit"):
            raise StopBackward(op.step)
        if not line:
            state["eof"] = True
            print("(end of input: running to the end)", file=out, flush=True)
            return
        if not (hasattr(source, "isatty") and source.isatty()):   # piped: no echoed Enter ends the line
            print(file=out)

    return pause


def report(args, out, model, cfg, description, tokenizer, x, y, stdin=None):
    from ..finetune import classifier_logits
    from ..kernels import get_backend
    print(description, file=out)
    print(f"GPT-2 {args.model}: {model.num_parameters():,} parameters in {len(model.parameters())} "
          f"tensors, {cfg['n_layers']} block{'s' if cfg['n_layers'] != 1 else ''}, dropout {cfg['drop_rate']}, kernels {get_backend()}", file=out)
    for line in finetune_lines(args, model):
        print(line, file=out)
    preview = tokenizer.decode(x[0, :12].tolist()).replace("\n", " ")
    print(f"one batch of {args.batch_size} x {args.context_length} tokens: {preview!r}...", file=out)
    listing = Listing(model, depth=args.depth, file=out, values=args.values,
                      pause=pauser(out, stdin) if args.step else None, op=args.op, module=args.module)
    worked, recording = None, contextlib.nullcontext()
    if args.worked not in (None, "AdamW"):                      # explain/worked.py: one row's numbers in the formula
        from .worked import Worked
        worked = Worked(args.worked, listing.shown)
        recording = worked.recording()
        listing.worked = worked if args.values else None

    classifier = getattr(args, "finetune", None) == "classifier"
    n_out, what = (2, "classes") if classifier else (cfg["vocab_size"], "tokens")

    def forward_done(loss):
        print(f"forward: loss {loss:.4f} (a uniform guess over {n_out} {what} "
              f"would give ln {n_out} = {math.log(n_out):.4f})"
              + ("; the classifier reads the last token's logits" if classifier else ""), file=out)
        if args.param is None:
            print("\nbackward, op by op in the order it runs: each op receives dL/d(its output) "
                  "and returns dL/d(each input)", file=out)
            print(listing.header(), file=out, flush=True)

    keep = None
    if args.values or args.html:                     # arrays the listing prints or the page shows
        from .render_html import MAX_VALUES
        keep = max(MAX_PRINTED if args.values else 0, MAX_VALUES if args.html else 0)
    try:
        with recording:
            trace = trace_backward(model, x, y, on_op=listing if args.param is None else None,
                                   on_forward=forward_done, keep_values=keep,
                                   logits_of=classifier_logits if classifier else None)
    except StopBackward as e:
        print(f"\nstopped after step {e.args[0]} (q): the ops below it did not run, "
              "and no parameter below them received a gradient", file=out)
        return None
    if args.param is not None:
        print("", file=out)
        print("\n".join(chain_lines(trace, args.param, model)), file=out)
    else:
        if args.depth is not None and len(trace.ops) > args.depth:
            print(f"  ... {len(trace.ops) - args.depth} more ops not listed (--depth {args.depth})", file=out)
        if args.op is not None or args.module is not None:
            which = " and ".join(f"--{k} {v}" for k, v in (("op", args.op), ("module", args.module)) if v is not None)
            print(f"  ({which}: {listing.listed} of {len(trace.ops)} ops listed)", file=out)
        if worked is not None and worked.lines_for(trace)[0] is None:
            print(f"  (--worked {args.worked}: no {args.worked} op was listed)", file=out)
        print("", file=out)
        closing = totals(trace, model)
        print("\n".join(fit(closing, listing.width) if args.values else closing), file=out)
    if args.optimizer:                               # explain/optimizer.py: optimizer.step(), taught
        from ..optim import AdamW
        from .optimizer import optimizer_lines, optimizer_step, worked_adamw
        opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=args.weight_decay)
        steps = optimizer_step(model, opt)
        print("", file=out)
        print("\n".join(optimizer_lines(steps, opt, values=args.values, width=listing.width)), file=out)
        if args.worked == "AdamW":
            print("", file=out)
            print("\n".join(worked_adamw(steps, opt)), file=out)
    if args.dot:
        title = (f"backward through GPT-2 {args.model}: loss {trace.loss:.4f}, {len(trace.ops)} ops, "
                 f"{model.num_parameters():,} parameters")
        write_dot(render_dot.to_dot(trace, model, expand=args.expand, title=title), args.dot, file=out)
    if args.html:
        write_page(args, out, trace, model, worked.lines_for(trace) if worked is not None else (None, None))
    return trace


def write_page(args, out, trace, model, worked=(None, None)):
    from . import render_html
    highlight = None
    if args.param is not None:
        ops, n = chain(trace, args.param)
        highlight = (args.param, [op.step for op, _ in ops], n)
    title = (f"backward through GPT-2 {args.model}: loss {trace.loss:.4f}, {len(trace.ops)} ops, "
             f"{model.num_parameters():,} parameters")
    try:
        records = render_html.records_from_trace(trace)
        step, lines = worked
        if step is not None:                         # --worked: the op's side panel shows row 0 worked
            records[step - 1].worked = lines
        path = render_html.write_html(records, args.html, title=title, loss=trace.loss, highlight=highlight,
                                      frozen=render_html.frozen_from_trace(trace))
    except OSError as e:
        raise UsageError(f"--html {args.html}: {e.strerror or e}") from None
    print(f"wrote {path} ({len(trace.ops)} ops{', values' if trace.ops[0].out_grad is not None else ''}"
          f"{', the chain of ' + args.param if highlight else ''}): open it in a browser", file=out)
