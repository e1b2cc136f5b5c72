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
    assert "exercise 2: gradcheck caught it: gradcheck: input 1 (2, 3)" in out
