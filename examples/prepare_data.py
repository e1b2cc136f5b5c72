"""Tokenize text files into a corpus for `pretrain.py --data DIR`: python examples/prepare_data.py --help

The command lives in tinygrad_gpt/cli/prepare_data.py.
"""
import sys

from tinygrad_gpt.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
