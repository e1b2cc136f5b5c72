"""Generate text with GPT-2: the book's `generate` (chapter 5) with a KV cache, streamed.

    python examples/generate.py --download gpt2 --prompt "Every effort moves you"
    python examples/generate.py --checkpoint runs/pretrain            # the model pretrain.py saved
    python examples/generate.py --help

The command lives in tinygrad_gpt/cli/generate.py.
"""
import sys

try:
    from tinygrad_gpt.cli.generate import main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
