"""Generate text with GPT-2: the book's `generate` (chapter 5) with a KV cache, streamed.

    python examples/generate.py --download gpt2 --prompt "Every effort moves you"
    python examples/generate.py --pretrained ~/models/gpt2 --temperature 1.4 --top-k 25 --seed 123
    python examples/generate.py --checkpoint runs/pretrain            # the model pretrain.py saved
    python examples/generate.py --model tiny --max-new-tokens 20       # random weights (a warning)

Weights: --pretrained takes a directory with Hugging Face's config.json + model.safetensors,
or a GPT-2 name ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl") already in the cache
(~/.cache/tinygrad_gpt/<name>/, or $TINYGRAD_GPT_CACHE/<name>/); --download fetches a name
there first. --checkpoint takes what pretrain.py saved (its --out directory, with the final
model; its save directory, for the newest checkpoint; or one step-NNNNNN directory), or a directory with model.safetensors (the
book's parameter names) and config.json (the book's config dict); see
tinygrad_gpt.loading.load_model.

The text goes to stdout as it is produced, then one line with the speed; messages and
warnings go to stderr. A mistake in the arguments or the files: one line on stderr, exit 2.
This module is the generate command; examples/generate.py is its wrapper.
"""
import argparse
import codecs
import sys
import time

from . import USAGE_ERROR, Parser, UsageError, add_runtime_flags, select_kernels, usage_error  # noqa: F401

DEFAULT_PROMPT = "Every effort moves you"


def build_parser():
    from ..model import CONFIGS
    from ..pretrained import GPT2_MODELS
    p = Parser(prog="generate.py", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompt", default=None,
                   help=f"the text to continue (default: {DEFAULT_PROMPT!r}; for a character model whose "
                        "text lacks one of its characters, a newline, or the model's first character)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", metavar="DIR", default=None,
                         help="Hugging Face GPT-2 directory (config.json + model.safetensors) or a cached name")
    weights.add_argument("--download", choices=list(GPT2_MODELS), default=None,
                         help="fetch this GPT-2 from huggingface.co into the cache, then load it")
    weights.add_argument("--checkpoint", metavar="DIR", default=None,
                         help="a model trained here: pretrain.py's save directory or step directory, "
                              "or model.safetensors + config.json")
    weights.add_argument("--model", choices=list(CONFIGS), default=None,
                         help="random weights of a named config (default when no weights are given: 124M)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=123, help="seeds sampling (and random weights)")
    p.add_argument("--context-size", type=int, default=None, help="default: the model's context length")
    p.add_argument("--stop-at-eos", action="store_true", help="stop at <|endoftext|>")
    p.add_argument("--no-cache", action="store_true", help="rerun the whole window every step (the book's loop)")
    add_runtime_flags(p, threads_help="BLAS and numba threads (default: all cores); on a busy machine "
                                      "1 decodes faster",
                      kernels_help="kernel backend (default: $TINYGRAD_GPT_KERNELS)")
    return p


def check_args(args):
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} is out of range: it must be at least 0")
    if not (args.temperature >= 0.0 and args.temperature < float("inf")):
        raise UsageError(f"--temperature {args.temperature} is out of range: it must be a finite number >= 0")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k} is out of range: it must be at least 1")
    if args.context_size is not None and args.context_size < 1:
        raise UsageError(f"--context-size {args.context_size} is out of range: it must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is out of range: it must be at least 1")
    if args.prompt is not None and not args.prompt:
        raise UsageError("--prompt is empty: generation needs at least one token to start from")


def load_model(args):
    from .. import loading, pretrained
    from ..model import GPTModel, get_config
    from ..tensor import manual_seed
    try:
        if args.download:
            return pretrained.from_pretrained(pretrained.resolve(args.download, download_missing=True,
                                                               progress=sys.stderr)), args.download
        if args.pretrained:
            return pretrained.from_pretrained(args.pretrained), args.pretrained
        if args.checkpoint:
            return loading.load_model(args.checkpoint), args.checkpoint
    except (OSError, ValueError, KeyError) as e:     # WeightsError, DownloadError, FileNotFoundError
        raise UsageError(str(e).strip("'\"")) from None
    name = args.model or "124M"
    print(f"warning: no weights given (--pretrained, --download or --checkpoint): "
          f"{name} with random weights (seed {args.seed}) produces gibberish", file=sys.stderr, flush=True)
    manual_seed(args.seed)
    return GPTModel(get_config(name)).eval(), f"random {name}"


def main(argv=None):
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as e:
        return usage_error("generate.py", e)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def default_prompt(tokenizer):
    """The book's prompt, unless a character model's text never used one of its characters:
    then a newline (nanoGPT's start), or the model's first character."""
    alphabet = getattr(tokenizer, "alphabet", None)
    if alphabet is None or set(DEFAULT_PROMPT) <= set(alphabet):
        return DEFAULT_PROMPT
    return "\n" if "\n" in alphabet else alphabet[0]


def run(args):
    check_args(args)
    select_kernels(args.kernels)
    import numpy as np
    from ..generation import cpu_threads, generate_stream
    from ..tokenizer import ENDOFTEXT_ID, text_to_token_ids, tokenizer_for

    model, source = load_model(args)
    cfg = model.cfg
    try:
        tokenizer = tokenizer_for(cfg)                                 # GPT-2's BPE, or micro's characters
        prompt = args.prompt if args.prompt is not None else default_prompt(tokenizer)
        idx = text_to_token_ids(prompt, tokenizer)                     # (1, T)
    except ValueError as e:
        raise UsageError(f"--prompt: {e}") from None
    eos_id = ENDOFTEXT_ID if cfg.get("tokenizer", "gpt2") == "gpt2" else None   # micro has no <|endoftext|>
    if args.stop_at_eos and eos_id is None:
        raise UsageError("--stop-at-eos: a character model's vocabulary has no <|endoftext|> to stop at; "
                         "leave out --stop-at-eos")
    if idx.max() >= cfg["vocab_size"]:
        raise UsageError(f"the prompt has token id {idx.max()}, beyond the model's vocabulary of "
                         f"{cfg['vocab_size']}: use a model with GPT-2's 50257 tokens")
    context_size = min(args.context_size or cfg["context_length"], cfg["context_length"])
    print(f"model: {source} ({model.num_parameters():,} parameters, context {cfg['context_length']}), "
          f"prompt {idx.shape[1]} tokens, KV cache {'off' if args.no_cache else 'on'}", file=sys.stderr, flush=True)

    # GPT-2's tokens are byte sequences; one character may span two tokens: decode incrementally
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    n, start = 0, time.perf_counter()
    first = None
    with cpu_threads(args.threads):
        for column in generate_stream(model, idx, args.max_new_tokens, context_size,
                                      temperature=args.temperature, top_k=args.top_k,
                                      eos_id=eos_id if args.stop_at_eos else None,
                                      rng=np.random.default_rng(args.seed), use_cache=not args.no_cache):
            token = int(column[0])
            first = time.perf_counter() - start if first is None else first
            n += 1
            sys.stdout.write(decoder.decode(tokenizer.decode_single_token_bytes(token)))
            sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    seconds = time.perf_counter() - start
    rate = n / seconds if seconds > 0 else float("inf")
    after_first = f", {(n - 1) / (seconds - first):.1f} tokens/s after the first" if n > 1 and seconds > first else ""
    print(f"\n{n} tokens in {seconds:.2f} s: {rate:.1f} tokens/s{after_first} "
          f"(KV cache {'off' if args.no_cache else 'on'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
