"""Generate text with GPT-2: the book's `generate` (chapter 5) with a KV cache, streamed.

    python examples/generate.py --download gpt2 --prompt "Every effort moves you"
    python examples/generate.py --checkpoint runs/pretrain            # the model pretrain.py saved
    python examples/generate.py --help

The command lives in tinygrad_gpt/cli/generate.py.
"""
import sys

from tinygrad_gpt.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
