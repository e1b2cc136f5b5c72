"""Tokenize text files into a corpus for `pretrain.py --data DIR`: python examples/prepare_data.py --help

The command lives in tinygrad_gpt/cli/prepare_data.py.
"""
import sys

try:
    from tinygrad_gpt.cli.prepare_data import main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
