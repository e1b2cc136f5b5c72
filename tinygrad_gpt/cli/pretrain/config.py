"""RunConfig: the pretrain run's configuration, built once and frozen.

`build_config` takes the parsed flags (never written: it works on a copy, its draft), the
flags the user typed, and on --resume the checkpoint, and settles every choice in one place:
the hyperparameters (the checkpoint's on --resume), the defaults that depend on the model
(--context-length) or on the job (--threads under mpirun), a corpus's --order/--max-steps,
the model config, and --precision; the output directory (without --out: the next free
runs/pretrain-N, rundir.settle_out), refused at once if another trainer holds it. Everything
after it reads the RunConfig; nothing writes it.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, fields
from typing import Optional

from ... import configcheck, rundir
from .. import UsageError
from . import corpus as pretrain_corpus
from .flags import RUN_KEY_TYPES, RUN_KEYS, adopt_checkpoint_config, build_parser, check_args


def choose_precision(requested: str) -> str:
    """--precision's policy, in one place: what a run asked for `requested` ("auto", "float32"
    or "bfloat16"; on --resume the checkpoint's) trains in. "auto" is bfloat16 where this CPU has
    a fast bf16 GEMM (AMX-BF16 with oneMKL, AVX512-BF16 on AMD) and float32, the book's
    precision, elsewhere (amp.choose_precision's sentence says why). Decided from the CPU's
    flags without loading MKL, so that a float32 run keeps MKL's pool out."""
    from ...amp import resolve_precision
    return resolve_precision(requested)


def precision_reason(config: "RunConfig") -> str:
    """The sentence the run prints after "Precision: " (amp.choose_precision's, which names the
    GEMM the bf16 products run on: called once the runtime is set up, since asking loads MKL)."""
    from ...amp import choose_precision as describe
    chosen, reason = describe(config.precision_requested)
    assert chosen == config.precision, (chosen, config.precision)     # one policy, not two
    return reason


@dataclass(frozen=True)
class RunConfig:
    """Every flag of the pretrain command, settled (see flags.build_parser for their meaning),
    and what was derived from them."""
    # the run's hyperparameters (flags.RUN_KEYS): stored in each checkpoint, taken from it on --resume
    model: str
    context_length: int
    drop_rate: float
    batch_size: int
    lr: float
    weight_decay: float
    eval_freq: int
    eval_iter: int
    start_context: str
    seed: int
    warmup_steps: int
    min_lr: Optional[float]
    grad_clip: Optional[float]
    accum_steps: int
    epochs: int
    # the text, the output and the checkpoints
    data: Optional[str]
    out: str                       # settled: without --out (and no checkpoint naming one), the next free runs/pretrain-N
    overwrite: bool
    save_optimizer: bool
    save_dir: Optional[str]
    save_every: Optional[int]
    on_save_error: str             # "stop" or "continue": a checkpoint that cannot be written
    resume: Optional[str]
    # a prepared corpus (None without --data DIR)
    order: Optional[str]
    max_steps: Optional[int]
    max_tokens: Optional[int]
    # the machine and the printing
    kernels: Optional[str]
    threads: Optional[int]
    log_grad_norms: bool
    no_plot: bool
    progress: Optional[bool]
    # derived
    precision: str                 # "float32" or "bfloat16": what the run trains in (and checkpoints store)
    precision_requested: str       # the --precision asked for (on --resume: the checkpoint's, unless given)
    model_config: dict             # the book's config dict (the checkpoint's on --resume)
    out_chosen: bool               # True when `out` was picked for the run (no --out given): the run says where
    explicit: frozenset            # the flags typed on the command line (dests)


def model_config(draft, ckpt, corpus_run=None):
    """The book's config dict: the checkpoint's on --resume, else the named one changed by the
    shape flags (--n-layers, --n-heads, --emb-dim, --qkv-bias, --context-length, --drop-rate)
    and --tokenizer (char: the training text's characters become the vocabulary, saved in the
    config as its "alphabet")."""
    from ...model import get_config
    if ckpt is not None:
        return dict(ckpt.config.get("model_config") or {})
    cfg = get_config(draft.model)
    cfg["context_length"] = draft.context_length
    if draft.drop_rate is not None:
        cfg["drop_rate"] = draft.drop_rate
    for key in ("n_layers", "n_heads", "emb_dim", "qkv_bias"):
        if getattr(draft, key) is not None:
            cfg[key] = getattr(draft, key)
    if draft.tokenizer == "gpt2" and cfg.get("tokenizer") == "char":
        from ...tokenizer import GPT2_VOCAB_SIZE
        del cfg["tokenizer"]
        cfg["vocab_size"] = GPT2_VOCAB_SIZE
    elif draft.tokenizer == "char" and not (cfg.get("tokenizer") == "char" and draft.data is None):
        # (micro without --data keeps its sentence and its 17 characters)
        if corpus_run is not None:
            raise UsageError(f"--tokenizer char reads the characters of a text, --data {draft.data} is a "
                             "corpus of GPT-2 tokens; fix: pass a text file, or --tokenizer gpt2")
        from ... import data
        try:
            text, _ = data.load_text(draft.data)     # the file, or the book's the-verdict.txt
        except data.DataError as e:
            raise UsageError(str(e)) from None
        alphabet = "".join(sorted(set(text)))
        cfg.update(tokenizer="char", alphabet=alphabet, vocab_size=len(alphabet))
        settle_start_context(draft, text, alphabet)
    return cfg


def settle_start_context(draft, text, alphabet):
    """A character model can only read its own characters: a typed --start-context with others is
    refused; the default one (the book's "Every effort moves you"), if the text lacks one of its
    characters, becomes the text's first line (at most 24 characters)."""
    missing = sorted(set(draft.start_context) - set(alphabet))
    if not missing:
        return
    if "start_context" in draft.explicit:
        raise UsageError(f"--start-context {draft.start_context!r} has {missing[0]!r}, which the training text "
                         f"{draft.data or '(the default)'} never uses (a character model reads only the "
                         f"text's {len(alphabet)} characters); fix: pass a --start-context from the text")
    draft.start_context = text.lstrip()[:24].split("\n")[0] or text[:1]


def build_config(args, explicit=frozenset(), ckpt=None, dp=None, ckpt_root=None):
    """The RunConfig of a run, and its corpus (a corpus.CorpusRun for --data DIR, else None).
    `args`: the parsed flags (read, not written); `explicit`: the dests typed on the command
    line; `ckpt`: the checkpoint on --resume (its state.json read, see flags.open_checkpoint)
    and `ckpt_root` its save directory; `dp`: the data-parallel context under mpirun, else
    None. Raises UsageError."""
    draft = types.SimpleNamespace(**vars(args))      # the one mutable copy, private to this function
    if ckpt is not None:
        adopt_checkpoint_config(draft, explicit, ckpt)
        optional = {k for k in RUN_KEYS if build_parser().get_default(k) is None}
        check_adopted(draft, ckpt, RUN_KEY_TYPES, optional)   # state.json's hyperparameters: their types
    check_args(draft)
    draft.out, draft.out_chosen = rundir.settle_out(draft.out)      # no --out: the next free runs/pretrain-N
    if dp is not None and draft.out_chosen:
        dp.barrier()          # every rank picks before rank 0 creates it (rundir.claim): the same directory
    rundir.refuse_if_busy(draft.out, draft.save_dir, ckpt_root, dp)  # a live trainer there: its pid, at once
    corpus_run = pretrain_corpus.open_run(draft, explicit, ckpt)
    pretrain_corpus.check_data_parallel(draft, dp)
    draft.explicit = frozenset(explicit)
    cfg = check_model_config(model_config(draft, ckpt, corpus_run), ckpt)  # types, ranges, memory
    draft.drop_rate = cfg["drop_rate"]
    draft.precision_requested = draft.precision
    draft.precision = choose_precision(draft.precision)
    names = {f.name for f in fields(RunConfig)} - {"model_config", "explicit"}
    config = RunConfig(**{name: getattr(draft, name) for name in names}, model_config=cfg,
                       explicit=frozenset(explicit))
    return config, corpus_run


# ----------------------------------------------------------------------------- checks before start-up
def check_model_config(cfg, ckpt=None):
    """The model config, checked before the model is built: a resumed checkpoint's comes from
    its state.json (types, ranges, and the memory training it takes)."""
    source = (f"checkpoint {ckpt.path}: {'state.json'} config.model_config" if ckpt is not None
              else "the model config")
    try:
        configcheck.check_book_config(cfg, source, configcheck.TRAINING_BYTES_PER_PARAMETER)
    except configcheck.ConfigError as e:
        fix = ("; fix: resume from another checkpoint, or start a new run" if ckpt is not None
               else "; fix: pick a smaller --model")
        raise UsageError(f"{e}{fix}") from None
    return cfg


def check_batches_fit(config, train_tokens):
    """The book's loader makes windows at range(0, n - T, T) and drops the last partial
    batch: refuse, before the minutes of start-up, a --batch-size x --accum-steps it cannot fill.
    config: the RunConfig."""
    T = config.context_length
    windows = len(range(0, max(train_tokens - T, 0), T))
    batches = windows // config.batch_size
    if batches < config.accum_steps:
        raise UsageError(f"the training text {config.data or '(the default)'} gives {windows} windows of "
                         f"{T} tokens: {batches} batches of --batch-size {config.batch_size}, fewer than "
                         f"--accum-steps {config.accum_steps}; fix: lower --batch-size or --accum-steps")


def check_adopted(values, ckpt, types, optional=()):
    """A resumed run's hyperparameters come from its state.json: each must have its type
    (a list where a number belongs is one line, not a TypeError in the range checks).
    values: the settings with the checkpoint's adopted (read only); types: {name: int, float
    or str}; optional: the names that may be None."""
    if ckpt is None:
        return
    for key, kind in types.items():
        value = getattr(values, key)
        if value is None and key in optional:
            continue
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float \
            else isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            raise UsageError(f"checkpoint {ckpt.path} is corrupted: its state.json has run.{key} "
                             f"{configcheck._show(value)}, not {'a number' if kind is float else 'an integer' if kind is int else 'a string'}; "
                             "fix: resume from another checkpoint, or start a new run")


def check_overwrite(config, ckpt, ckpt_root, save_dir) -> None:
    """--out holding another run's model is refused unless --overwrite, or this is --resume of
    the run that wrote it (continuing in its own save directory). config: the RunConfig."""
    found = rundir.holds_model(config.out)
    if not found or config.overwrite:
        return
    if ckpt is not None:
        saved_out = (ckpt.config.get("options") or {}).get("out")
        same_out = saved_out is not None and rundir.resolved(saved_out) == rundir.resolved(config.out)
        same_run = save_dir is not None and rundir.resolved(save_dir) == rundir.resolved(ckpt_root)
        if same_out and same_run:
            return
        if same_out:
            raise UsageError(f"--out {config.out} holds the final model of the run that checkpoint {ckpt.path} "
                             f"belongs to; this branch (--save-dir {save_dir}) would overwrite it; fix: pass "
                             "--out NEW_DIR for the branch, or --overwrite")
    raise UsageError(f"--out {config.out} holds another run's model ({found[0]}); fix: pass a new --out, "
                     "or --overwrite to replace it")
