"""python -m tinygrad_gpt.torch SCRIPT [ARGS]: run a PyTorch script on the engine, unmodified.

Its `import torch` (torch.nn, torch.nn.functional, torch.optim, torch.utils.data) gets
tinygrad_gpt.torch, and tiktoken.get_encoding("gpt2") the offline GPT-2 encoding.
"""
import os
import runpy
import sys

USAGE = "usage: python -m tinygrad_gpt.torch SCRIPT [ARGS...]"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(f"python -m tinygrad_gpt.torch: error: no script given; {USAGE}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1].strip())
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"python -m tinygrad_gpt.torch: error: {script} is not a file; {USAGE}", file=sys.stderr)
        return 2
    if "torch" in sys.modules and not sys.modules["torch"].__name__.startswith("tinygrad_gpt"):
        print("python -m tinygrad_gpt.torch: error: real torch is already imported in this process; "
              "run the script in a fresh interpreter", file=sys.stderr)
        return 2
    from .binding import bound
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))   # as `python SCRIPT` would
    with bound():
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
