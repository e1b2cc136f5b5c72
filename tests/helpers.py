"""Helpers shared by the test modules: one copy each. Fixtures live in conftest.py.

tests/ is on sys.path through setup.cfg's `pythonpath = tests`, so `from helpers import ...`
works under every pytest import mode (including --import-mode=importlib), and no test
module imports another test module.
"""
import contextlib
import importlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- reference packages
# CI's second run sets TINYGRAD_GPT_REQUIRE_REFERENCE=1 after installing the ".[reference]" extra:
# then a missing comparison package is a failure, not a skip.
REQUIRE_REFERENCE = os.environ.get("TINYGRAD_GPT_REQUIRE_REFERENCE", "").strip() not in ("", "0")


def require(name, program=False):
    """Import module `name` (or, with program=True, find the executable `name` on PATH) and
    return it; skip the test (or the whole module, at module level) when it is missing, or
    FAIL when TINYGRAD_GPT_REQUIRE_REFERENCE=1. Use it instead of pytest.importorskip."""
    if program:
        found, why = shutil.which(name), f"the program {name!r} is not on PATH"
    else:
        try:
            found, why = importlib.import_module(name), None
        except ImportError as e:
            found, why = None, f"{name} does not import ({type(e).__name__}: {e})"
    if found is not None:
        return found
    why += f", needed by {Path(sys._getframe(1).f_code.co_filename).name}"   # the calling test file
    if REQUIRE_REFERENCE:
        pytest.fail(f"TINYGRAD_GPT_REQUIRE_REFERENCE=1 but {why}; "
                    f'pip install -e ".[reference,mpi]" (see README, "Comparisons")', pytrace=False)
    raise pytest.skip.Exception(why, allow_module_level=True)


# ----------------------------------------------------------------------------- shared data
def shared_data(name):
    """Path of shared/data/<name>, the book's files that are never committed (the-verdict.txt),
    or None. Looked for in $TINYGRAD_GPT_SHARED_DATA, then in shared/data/ beside the checkout
    or beside any folder above it (a clone in CI has shared/ next to it; a git worktree
    lives a level or two deeper)."""
    env = os.environ.get("TINYGRAD_GPT_SHARED_DATA")
    places = [Path(env)] if env else []
    places += [d / "shared" / "data" for d in REPO.parents]
    for place in places:
        if (place / name).is_file():
            return place / name
    return None


VERDICT = shared_data("the-verdict.txt")
needs_verdict = pytest.mark.skipif(VERDICT is None, reason="the-verdict.txt is absent: no shared/data/ beside "
                                   "the checkout (set TINYGRAD_GPT_SHARED_DATA to its folder)")


# ----------------------------------------------------------------------------- micro GPTs
MICRO = {"vocab_size": 11, "context_length": 6, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
         "drop_rate": 0.0, "qkv_bias": True}
"""The micro GPT: 1984 parameters, small enough for a float64 gradient check of every one."""


def micro_model(seed=0, **overrides):
    """GPTModel({**MICRO, **overrides}) with the package's generator seeded first."""
    from tinygrad_gpt import GPTModel, manual_seed
    manual_seed(seed)
    return GPTModel({**MICRO, **overrides})


class PairDataset:
    """Fixed (inputs, targets) rows, (n, T) each, indexable by an array as GPTDatasetV1."""

    def __init__(self, inputs, targets):
        self.input_ids, self.target_ids = inputs, targets

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


# ----------------------------------------------------------------------------- the pretrain CLI
TINY = ["--model", "tiny", "--context-length", "16", "--batch-size", "2", "--no-plot",
        "--threads", "1", "--kernels", "numpy", "--eval-freq", "2", "--eval-iter", "2"]


def small_text(n_tokens=400):
    """The first words of the bundled story, about n_tokens GPT-2 tokens."""
    from tinygrad_gpt.data import SAMPLE_TEXT_PATH
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer
    words = SAMPLE_TEXT_PATH.read_text(encoding="utf-8").split()
    tok = get_gpt2_tokenizer()
    n = n_tokens * 3 // 4
    while len(tok.encode(" ".join(words[:n]))) < n_tokens:
        n += 10
    return " ".join(words[:n])


@contextlib.contextmanager
def isolated(monkeypatch, tmp_path):
    """main() sets the kernel backend, BLAS/numba/MKL threads and signal handlers: undo all."""
    import numba
    from threadpoolctl import threadpool_limits
    from tinygrad_gpt import kernels
    from tinygrad_gpt.kernels import bf16_mkl
    from tinygrad_gpt.runtime import runtime
    settings = {k: getattr(runtime, k) for k in ("threads", "float32_gemm", "gemm", "autocast")}
    numba_threads = numba.get_num_threads()
    mkl_threads = bf16_mkl.get_num_threads()         # 0 while MKL is not loaded
    limits = threadpool_limits(limits=None)
    monkeypatch.setenv("TINYGRAD_GPT_KERNELS", "numpy")
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with kernels.use():                          # whatever main() picks, the test's comes back
            yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        runtime.set(**settings)                      # the runtime's record, then the pools' own counts
        limits.restore_original_limits()
        numba.set_num_threads(numba_threads)
        if mkl_threads:
            bf16_mkl.set_num_threads(mkl_threads)


# ----------------------------------------------------------------------------- the pretrain CLI as a process
@contextlib.contextmanager
def mounted_tmpfs(directory, size):
    """A tmpfs of `size` ("2M") mounted at `directory` (made here), unmounted afterwards; skips
    where it cannot be mounted (root only: CI runs as root)."""
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    directory.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def env():
    """A subprocess's environment: NumPy kernels, one BLAS thread, unbuffered, this checkout."""
    e = dict(os.environ, TINYGRAD_GPT_KERNELS="numpy", PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1",
             OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    return e


def cli(*args):
    """The command line of examples/pretrain.py with args."""
    return [sys.executable, str(REPO / "examples" / "pretrain.py"), *map(str, args)]


def start(cmd, cwd):
    import subprocess
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def by_step(lines, table):
    """Collect Ep lines by step; a step printed twice (before a kill and after the resume)
    must print the same losses."""
    for line in lines:
        step = line.split("(Step ")[1][:6]
        assert table.setdefault(step, line) == line, (table[step], line)
    return table


# ----------------------------------------------------------------------------- a prepared corpus
STORY = (REPO / "tinygrad_gpt" / "data" / "sample_story.txt").read_text(encoding="utf-8")


def story_corpus(root):
    """The bundled story as 12 documents in root, prepared into root/c (10 % held out)."""
    import io
    from tinygrad_gpt.cli.prepare_data import main as prepare_main
    words = STORY.split()
    step = len(words) // 12
    for i in range(12):
        (root / f"part{i:02d}.txt").write_text(" ".join(words[i * step:(i + 1) * step]), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert prepare_main([str(root), "--out", str(root / "c"), "--shard-tokens", "1000"]) == 0
    return root / "c"


def run_cli(*argv):
    from tinygrad_gpt.cli import pretrain
    return pretrain.main([str(a) for a in argv])


def ep_lines(text):
    return [line for line in text.splitlines() if line.startswith("Ep ")]


def assert_same_run(dir_a, dir_b):
    """Two checkpoints hold the same run: tensor files byte for byte, the same TrainState
    (loss history, epoch, batch, order, tokens) and the same generator states."""
    from tinygrad_gpt import checkpoint as C
    for name in (C.MODEL_FILE, C.OPTIMIZER_FILE):
        a, b = (Path(dir_a) / name).read_bytes(), (Path(dir_b) / name).read_bytes()
        assert a == b, f"{name} differs between {dir_a} and {dir_b}"
    ma = json.loads((Path(dir_a) / C.STATE_FILE).read_text())
    mb = json.loads((Path(dir_b) / C.STATE_FILE).read_text())
    for key in ("step", "train_state", "rng", "optimizer"):
        assert ma[key] == mb[key], f"state.json[{key!r}] differs"
    assert ma["train_state"]["train_losses"], "no losses recorded"

