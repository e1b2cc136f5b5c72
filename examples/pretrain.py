"""Pretrain GPT-2 as in chapter 5 of "Build a Large Language Model From Scratch".

    python examples/pretrain.py                      # the book's run (124M, 10 epochs)
    python examples/pretrain.py --model tiny --epochs 2
    python examples/generate.py --checkpoint runs/pretrain   # then: text from the model it saved (its
                                                             # directory is printed: runs/pretrain-2 the 2nd time)
    python examples/pretrain.py --help
"""
import sys

try:
    from tinygrad_gpt.cli.pretrain import main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
