"""Freed memory kept for the next step (tinygrad_gpt/memory.py): the runtime's allocator policy.
A loop that sets it (`runtime.set(allocator="keep")`, as the commands do) reuses the step's pages,
backward() sets no policy of its own, and the memory can be handed back.

Each check runs in a fresh process: glibc's thresholds are process-wide and cannot be unset,
and this test process may have set them already. Minor page faults (getrusage) count the
fresh pages the kernel zeroed for the process: a deterministic measure, unlike time.
"""
import os
import resource
import subprocess
import sys

import pytest

from tinygrad_gpt import memory

from helpers import REPO

# The fault counts below assume 4 KiB pages (2 MiB huge pages: a 64 MB array is >= 32 faults).
linux_4k = pytest.mark.skipif(sys.platform != "linux" or not os.path.exists("/proc/self/statm")
                              or resource.getpagesize() != 4096,
                              reason="glibc's mallopt and Linux's page counters, 4 KiB pages")

# A training step of the plain API first ("keep": after setting the policy, as a command does),
# then what every step does: a big array (64 MB, as a step's logits) allocated, touched and
# freed five times.
REUSE_AFTER_BACKWARD = """
import resource, sys
import numpy as np
import tinygrad_gpt as tg
from tinygrad_gpt import functional as F
from tinygrad_gpt.runtime import runtime
cfg = dict(tg.get_config("tiny"), drop_rate=0.0)
model = tg.GPTModel(cfg)
opt = tg.AdamW(model.parameters(), lr=1e-3)
x = np.arange(32).reshape(2, 16) % cfg["vocab_size"]
if sys.argv[1] == "keep":
    runtime.set(allocator="keep")
if sys.argv[1] != "untouched":
    F.cross_entropy(model(x), x).backward()
    opt.step()
np.ones(16 << 20, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(16 << 20, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("policy", runtime.allocator)
"""


def run(code, *args, **environ):
    """Run `code` in a fresh Python (this checkout, NumPy kernels, one BLAS thread, the opt-out
    variable only if given); its printed words."""
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD_GPT_NO_MEMORY_CACHING"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TINYGRAD_GPT_KERNELS="numpy", OPENBLAS_NUM_THREADS="1", **environ)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


@linux_4k
def test_the_keep_policy_reuses_freed_pages_and_backward_sets_no_policy():
    """Untouched, glibc maps a 64 MB array fresh each time and the kernel zeroes its pages:
    165-2,720 faults over the five (fewer with huge pages; never under 5 x 32, 2 MB pages).
    With runtime.set(allocator="keep") before a step: none. A backward() alone sets nothing
    (issue 34: the commands set the policy where they set threads). With only one of the two
    thresholds set (memory.keep_freed_memory) the "keep" count fails."""
    untouched = int(run(REUSE_AFTER_BACKWARD, "untouched")[0])
    trained = run(REUSE_AFTER_BACKWARD, "train")
    kept = run(REUSE_AFTER_BACKWARD, "keep")
    opted_out = run(REUSE_AFTER_BACKWARD, "keep", TINYGRAD_GPT_NO_MEMORY_CACHING="1")
    print(f"minor faults over 5 allocations of 64 MB: untouched {untouched}, after backward() "
          f"{trained[0]}, with the keep policy {kept[0]}, opted out {opted_out[0]}")
    assert untouched >= 100
    assert int(trained[0]) >= 100 and trained[1:] == ["policy", "system"]   # backward() asked nothing
    assert int(kept[0]) < 50 and kept[1:] == ["policy", "keep"]
    assert int(opted_out[0]) >= 100 and opted_out[1:] == ["policy", "system"]   # the variable is obeyed


EMPTY_CACHE = """
import resource
import numpy as np
from tinygrad_gpt import memory
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
assert memory.keep_freed_memory()
a = np.ones(32 << 20, np.float32)                   # 128 MB, touched
del a
kept = rss_mib()
print(memory.empty_cache(), round(kept - rss_mib()))
"""


@linux_4k
def test_empty_cache_hands_the_kept_memory_back():
    """Kept, a freed 128 MB array stays in the process's resident memory; empty_cache() (glibc's
    malloc_trim) releases it, as torch.cuda.empty_cache() does its GPU cache."""
    released, mib = run(EMPTY_CACHE)
    print(f"empty_cache() released {mib} MiB")
    assert released == "True" and int(mib) >= 120


class FakeLibc:
    """glibc's two calls, recorded; `refuse` lists the (param, value) pairs mallopt says no to."""

    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 0 if (param, value) in self.refuse else 1


@pytest.mark.parametrize("value, disabled", [(None, False), ("", False), ("0", False), ("1", True),
                                             ("yes", True)])
def test_the_opt_out_variable_and_once(monkeypatch, value, disabled):
    """runtime.set(allocator="keep") asks glibc once (setting it again asks nothing), and not at
    all when TINYGRAD_GPT_NO_MEMORY_CACHING is set to anything but "" or "0" (the runtime reads
    it on first use; here its reading is redone and handed to the runtime)."""
    from tinygrad_gpt.runtime import _from_environment, runtime
    libc = FakeLibc()
    monkeypatch.setattr(memory._glibc_found, "libc", libc)
    if value is None:
        monkeypatch.delenv(memory.OPT_OUT, raising=False)
    else:
        monkeypatch.setenv(memory.OPT_OUT, value)
    monkeypatch.setattr(runtime, "keep_refused", _from_environment()["keep_refused"])
    monkeypatch.setattr(runtime, "allocator", "system")
    assert memory.caching_disabled() is disabled
    runtime.set(allocator="keep")
    assert runtime.allocator == ("system" if disabled else "keep")
    runtime.set(allocator="keep")                                       # once
    assert len(libc.calls) == (0 if disabled else 2)
    assert memory.keep_freed_memory() is True and len(libc.calls) == (2 if disabled else 4)   # asked


def test_an_older_glibc_that_refuses_a_1_gib_mmap_threshold_gets_mmap_turned_off(monkeypatch):
    """glibc once refused an mmap threshold above 32 MiB: then no array is mapped at all
    (M_MMAP_MAX = 0), and the trim threshold is set as before."""
    libc = FakeLibc(refuse={(memory.M_MMAP_THRESHOLD, 1 << 30)})
    monkeypatch.setattr(memory._glibc_found, "libc", libc)
    assert memory.keep_freed_memory() is True
    assert libc.calls == [(memory.M_MMAP_THRESHOLD, 1 << 30), (memory.M_MMAP_MAX, 0),
                          (memory.M_TRIM_THRESHOLD, (1 << 31) - 1)]
    refused = FakeLibc(refuse={(memory.M_MMAP_THRESHOLD, 1 << 30), (memory.M_MMAP_MAX, 0)})
    monkeypatch.setattr(memory._glibc_found, "libc", refused)
    assert memory.keep_freed_memory() is False                          # nothing kept: say so
