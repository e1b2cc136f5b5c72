"""House rules that a grep can check: observe through hooks, switch with context managers.

Nothing in the package or the tests assigns to `Function.apply` or to a module's `forward`
(tracing and checks attach to tensor.register_forward_hook / register_backward_hook and the
module hooks instead), nothing writes TINYGRAD_GPT_KERNELS into os.environ, and the kernel
backend is switched with kernels.use(), not saved and restored by hand.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("tinygrad_gpt/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("examples/*.py"),
                  *ROOT.glob("benchmarks/*.py")])
RULES = [
    ("assigns to Function.apply", re.compile(r"\bapply\s*=(?!=)|setattr\([^)]*[\"']apply[\"']")),
    ("assigns to a module's forward", re.compile(r"\.forward\s*=(?!=)|setattr\([^)]*[\"']forward[\"']\s*,\s*(?!lambda ctx)")),
    ("writes TINYGRAD_GPT_KERNELS", re.compile(r"environ\[[\"']TINYGRAD_GPT_KERNELS[\"']\]\s*=|"
                                               r"setenv\([\"']TINYGRAD_GPT_KERNELS[\"'].*\bnumba\b")),
    ("saves the kernel backend to restore it by hand", re.compile(r"set_backend\((previous|old|backend|saved)\)")),
]


def violations(text, rule):
    return [i + 1 for i, line in enumerate(text.splitlines()) if rule.search(line) and "re.compile" not in line]


@pytest.mark.parametrize("what, rule", RULES, ids=[r[0] for r in RULES])
def test_no_source_file_breaks_the_rule(what, rule):
    skip = {Path(__file__).resolve()}
    if what.startswith("saves the kernel backend"):
        skip.add((ROOT / "tinygrad_gpt" / "kernels" / "__init__.py").resolve())   # kernels.use() itself
    found = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES if p.resolve() not in skip
             for n in violations(p.read_text(encoding="utf-8"), rule)]
    print(f"{len(SOURCES)} files checked")
    assert not found, f"{what}: {', '.join(found)}"


@pytest.mark.parametrize("line, what", [
    ("    Function.apply = classmethod(apply)", "assigns to Function.apply"),
    ('    monkeypatch.setattr(Function, "apply", classmethod(recording_apply))', "assigns to Function.apply"),
    ("            module.forward = wrap(name, module, module.forward)", "assigns to a module's forward"),
    ('        os.environ["TINYGRAD_GPT_KERNELS"] = args.kernels', "writes TINYGRAD_GPT_KERNELS"),
    ("        set_backend(previous)", "saves the kernel backend to restore it by hand"),
])
def test_the_rules_catch_what_the_tree_used_to_do(line, what):
    rule = dict(RULES)[what]
    assert violations(line, rule) == [1]


# ----------------------------------------------------------------------------- the learner's path is the math
READING_PATH = ["tensor", "ops", "functional", "nn", "model", "optim", "train"]
MACHINE_WORDS = re.compile(r"bf16|bfloat16|\bamp\.|\bkept\b|weakref|getrefcount|mallopt|threadpool", re.IGNORECASE)


def test_the_reading_path_names_no_machine():
    """The seven files a learner reads say the math; dtype, GEMM library, reused buffers,
    threads and malloc tuning live in kernels/ and memory.py (docs/reading.md)."""
    found = [f"tinygrad_gpt/{name}.py:{i + 1}: {line.strip()}"
             for name in READING_PATH
             for i, line in enumerate((ROOT / "tinygrad_gpt" / f"{name}.py").read_text(encoding="utf-8").splitlines())
             if MACHINE_WORDS.search(line)]
    assert not found, "machine words on the reading path:\n" + "\n".join(found)


def test_the_reading_path_words_rule_can_fail():
    assert MACHINE_WORDS.search("ctx.bf16 = amp.is_autocast_enabled()")
    assert MACHINE_WORDS.search("_kept = {}  # weakref to the owner")
    assert not MACHINE_WORDS.search("dx = dy W, dW = dy^T x")


def test_nothing_in_the_package_counts_references():
    """Buffers are reused by owner and liveness (kernels/buffers.Buffer), never by sys.getrefcount."""
    found = [str(p.relative_to(ROOT)) for p in ROOT.glob("tinygrad_gpt/**/*.py")
             if "getrefcount" in p.read_text(encoding="utf-8")]
    assert found == []
