"""python -m tinygrad_gpt.torch SCRIPT [ARGS]: run a PyTorch script on the engine, unmodified.

Its `import torch` (torch.nn, torch.nn.functional, torch.optim, torch.utils.data) gets
tinygrad_gpt.torch, and tiktoken.get_encoding("gpt2") the offline GPT-2 encoding.
"""
import os
import runpy
import sys

USAGE = "usage: python -m tinygrad_gpt.torch SCRIPT [ARGS...]"


def main(argv=None, as_program=False):
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
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))   # as `python SCRIPT` would
    try:
        with bound():
            try:
                runpy.run_path(script, run_name="__main__")
            finally:
                if as_program:                   # what the script left running still sees the shim
                    finish_like_the_interpreter()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def finish_like_the_interpreter():
    """What Python does after a script's last line (threading._shutdown, then atexit), done
    while `torch` is still the shim: the threading module's exit hooks (they tell thread pools'
    idle workers to stop), then a join of every non-daemon thread, then the atexit handlers
    (run once: the interpreter finds them cleared)."""
    import atexit
    import threading
    for hook in reversed(list(getattr(threading, "_threading_atexits", []))):
        hook()
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()


if __name__ == "__main__":
    try:
        sys.exit(main(as_program=True))
    except KeyboardInterrupt:
        sys.exit(130)
