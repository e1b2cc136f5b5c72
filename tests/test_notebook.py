"""examples/backward_walkthrough.ipynb runs top to bottom in a fresh kernel, and says what it should.

Executed with nbclient and ipykernel (the dev extras) in a kernel named python3, on this
checkout: a first cell, added here, prints which tinygrad_gpt the kernel imported.
"""
import re

import pytest
from helpers import REPO, require

nbformat = require("nbformat")                       # nbclient's; both come with pip install -e ".[dev]"
nbclient = require("nbclient")
require("ipykernel")                                 # the python3 kernel
NOTEBOOK = REPO / "examples" / "backward_walkthrough.ipynb"
SOLUTIONS = REPO / "examples" / "walkthrough_solutions.py"


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import tinygrad_gpt; print('PACKAGE', tinygrad_gpt.__file__)"))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO / "examples")}})
    client.execute()                                 # raises CellExecutionError on the first failing cell
    return nb


def text_of(nb):
    """Each code cell's printed text. A cell's prints may arrive as several stream outputs (the
    kernel flushes on a timer, even inside one print call): joined without a separator."""
    return "\n".join("".join(o.get("text", "") for o in c.get("outputs", []))
                     for c in nb.cells if c.cell_type == "code")


def test_the_notebook_runs_on_this_checkout_without_an_error(executed):
    out = text_of(executed)
    assert f"PACKAGE {REPO / 'tinygrad_gpt' / '__init__.py'}" in out
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors == []


def test_the_notebook_checks_by_hand_what_the_engine_computes(executed):
    out = text_of(executed)
    assert "L = 49.0, dL/da = 42.0, dL/db = 28.0, dL/dc = 14.0" in out
    assert "gradcheck through the block: True" in out
    assert re.search(r"max \|out_head.weight.grad - dlogits\^T h\| = \d", out)
    assert "gradcheck: input 0 (3, 4), element" in out              # WrongCube caught


def test_the_micro_gpt_learns_its_sentence(executed):
    out = text_of(executed)
    losses = [float(x) for x in re.findall(r"step +\d+  loss (\d+\.\d+)", out)]
    assert len(losses) == 7 and losses[0] > 2.5 and losses[-1] < 0.2, losses
    assert "after:  'Every effort moves you onward.'" in out
    seconds = float(re.search(r"\n(\d+\.\d) s\n", out).group(1))
    assert seconds < 60


def test_the_exercises_start_undone_and_the_solutions_pass(executed):
    out = text_of(executed)
    assert "exercise 1: not done yet" in out and "exercise 2: not done yet" in out
    assert "exercise 3: not right yet: gradcheck: input 0 (5, 3), element (1, 0)" in out   # id 1 repeats
    assert "exercise 1: correct" in out and "exercise 3: correct" in out
    # exercise 2 checks a and b one at a time: gradcheck names b, the wrong one, and passes a
    assert "exercise 2: gradcheck caught it on b:\n  b: gradcheck: input 1 (2, 3)" in out
    assert "6 of 6 elements disagree" in out and "\n  a: gradcheck" not in out


def test_the_learner_derives_layer_norm_softmax_cross_entropy_and_attention(executed):
    """Section 9: the learner's own backwards, stubs first ("not done yet"), the solutions at the
    end compared step by step with the engine's intermediates (cmp) and then gradcheck."""
    sources = "\n".join(c.source for c in executed.cells if c.cell_type == "code")
    solutions = SOLUTIONS.read_text(encoding="utf-8")
    for name in ("gelu_backward", "embedding_backward", "layer_norm_backward", "softmax_cross_entropy_backward",
                 "attention_backward"):
        assert sources.count(f"def {name}(") == 1, name                # the learner's stub only:
        assert solutions.count(f"def {name}(") == 1, name              # the solution is in its own file
    assert "class BrokenMul(" in solutions and sources.count("class BrokenMul(") == 1
    out = text_of(executed)
    for k in (4, 5, 6):
        assert f"exercise {k}: not done yet" in out
    assert "exercise 4: 8 of 8 gradients right; gradcheck: True" in out
    assert "exercise 5: 3 of 3 gradients right; gradcheck: True" in out
    assert "exercise 6: 5 of 5 gradients right; gradcheck: True" in out
    rows = re.findall(r"^(\w+) +\| exact: (True|False) +\| approximate: (True|False) +\| maxdiff: ([\d.e+-]+)$", out, re.M)
    # the steps of exercises 4, 5 (and the fused op), 6, then layer norm's closed form against the six steps
    assert len(rows) == 8 + 3 + 1 + 5 + 1 and all(r[2] == "True" and float(r[3]) < 1e-12 for r in rows), rows
    assert "dq row 0: [0. 0. 0. 0.]" in out


def test_the_notebook_says_what_it_prints(executed):
    """The prose matches the numbers: the loss at initialisation, the sample length, where the
    training loss levels out and the least possible loss it is compared with."""
    cells = executed.cells
    prose = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    out = text_of(executed)
    loss = float(re.search(r"^loss (\d\.\d+)   \(uniform: ln 17 = 2\.8332\)", out, re.M).group(1))
    assert f"prints {loss:.2f}" in prose
    n = int(re.search(r'def sample\(model, prompt="Every e", n=(\d+)\)', "\n".join(c.source for c in cells)).group(1))
    assert f"greedy-sample {n} characters" in prose
    least, last = map(float, re.search(r"least possible loss on these windows: (\d\.\d+); the model's last: (\d\.\d+)", out).groups())
    assert f"mean loss of {least:.4f}" in prose and least < last < 0.2
    first = float(re.search(r"step +0  loss (\d\.\d+)", out).group(1))
    assert f"falls from {first:.2f}" in prose
    assert "near zero" not in prose and "starts near ln 17" not in prose
    assert not re.search(r"\.\n[a-z]", prose.replace("e.g.\n", "")), "a sentence fragment after a full stop"
    # the exercise stubs take reference.py's argument order
    sources = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "def gelu_backward(dy, x)" in sources and "def gelu_backward(x, dy)" not in sources
    assert "def embedding_backward(dout, ids, num_embeddings)" in sources and "(ids, dout, num_embeddings)" not in sources


def test_the_hints_ask_rather_than_give_the_formulas(executed):
    """Section 9's hints are questions and shapes: the formulas they used to state are the
    solutions file's, not the exercise's."""
    prose = "\n".join(c.source for c in executed.cells if c.cell_type == "markdown")
    for given in ("-1/2 rstd³", "dvar * 2 xc / C", "**dmean** = -(sum of dxc", "**dp** = dlogp / p",
                  "**dv** = attᵀ dout", "**dq** = ds k / sqrt(D)", "dq[0] is exactly zero"):
        assert given not in prose, given
    assert prose.count("?") >= 15
    out = text_of(executed)
    assert "--use-op walkthrough_solutions.py:LayerNorm" in out or "first departure: none" in out
    assert "first departure: none (your backward and the engine's agree at every op)" in out
    worst = float(re.search(r"largest loss difference over 20 steps: (\S+)", out).group(1))
    assert worst < 1e-6


# ----------------------------------------------------------------------------- examples/engine_walkthrough.ipynb
ENGINE_NOTEBOOK = REPO / "examples" / "engine_walkthrough.ipynb"
ENGINE_SOLUTIONS = REPO / "examples" / "engine_solutions.py"
EXERCISES = ("unbroadcast", "mul_backward", "matmul_backward", "tanh_backward", "topological_order", "backward",
             "adamw_step")


@pytest.fixture(scope="module")
def engine_executed():
    nb = nbformat.read(ENGINE_NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import tinygrad_gpt; print('PACKAGE', tinygrad_gpt.__file__)"))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO / "examples")}})
    client.execute()                                 # the solutions' asserts raise here if one is wrong
    return nb


def test_the_engine_notebook_runs_on_this_checkout_and_its_exercises_start_undone(engine_executed):
    out = text_of(engine_executed)
    assert f"PACKAGE {REPO / 'tinygrad_gpt' / '__init__.py'}" in out
    for k in range(1, 6):
        assert f"exercise {k}: not done yet" in out
    assert "training: not done yet (it needs exercises 1-5)" in out


def test_the_learners_engine_and_adamw_step_match_the_engines_with_the_solutions(engine_executed):
    out = text_of(engine_executed)
    assert "exercise 1: 5 of 5 shapes right" in out
    assert "exercise 2: 5 of 5 gradients right" in out
    assert "exercise 3: right (the 2,000-deep chain: 4001 tensors)" in out
    assert "exercise 4: 3 of 3 leaves right; the chain rule by hand: True" in out
    assert "exercise 5: 5 of 5 steps right" in out
    rows = re.findall(r"^(.+?) +\| exact: (True|False) +\| approximate: (True|False) +\| maxdiff: ([\d.e+-]+)$", out, re.M)
    assert len(rows) == 5 + 5 + 3 + 3 * 5 and all(r[2] == "True" for r in rows), rows


def test_the_learners_engine_trains_a_small_model_as_the_engine_does(engine_executed):
    out = text_of(engine_executed)
    worst, last = map(float, re.search(r"training: largest loss difference over 150 steps (\S+); last loss (\S+)",
                                       out).groups())
    assert worst < 1e-9 and last < 0.1
    first = float(re.search(r"step   1  loss yours (\d\.\d+)", out).group(1))
    assert first > 2.5                               # it starts near ln 17 and learns
    assert "your model writes: 'Every effort moves you onward.'" in out
    seconds = float(re.search(r"\n(\d+\.\d) s\n", out).group(1))
    assert seconds < 30


def test_the_engine_notebooks_solutions_are_in_their_own_file_and_its_hints_ask(engine_executed):
    sources = "\n".join(c.source for c in engine_executed.cells if c.cell_type == "code")
    solutions = ENGINE_SOLUTIONS.read_text(encoding="utf-8")
    for name in EXERCISES:
        assert len(re.findall(rf"^def {name}\(", sources, re.M)) == 1, name     # the stub
        assert len(re.findall(rf"^def {name}\(", solutions, re.M)) == 1, name   # the answer
        assert f'def {name}(' in sources and "NotImplementedError" in sources
    prose = "\n".join(c.source for c in engine_executed.cells if c.cell_type == "markdown")
    assert prose.count("?") >= 12
    for given in ("grad @ b.T", "a.T @ grad", "1 - y * y", "1 - y²", "np.sqrt(v_hat) + eps"):
        assert given not in prose, given
