"""explain --break MODE: the micro model's backward run twice, correct and with one op's backward
sabotaged (a subclass swapped in by a forward hook, written in explain/sabotage.py), compared op
by op: the first op that receives the same gradient and returns a different one is named, and
gradcheck on that op alone passes for the engine's Function and fails for the sabotaged one."""
import io
import re

import numpy as np
import pytest

from tinygrad_gpt import Tensor, explain, functional as F
from tinygrad_gpt.explain import sabotage
from tinygrad_gpt.gradcheck import GradcheckError, gradcheck


def run_cli(*argv):
    out = io.StringIO()
    code = explain.main(list(argv), file=out)
    return code, out.getvalue()


@pytest.mark.parametrize("mode, step, op, module", [
    ("layernorm-mean", 3, "LayerNorm", "final_norm"),               # the first LayerNorm backward runs
    ("embedding-assign", 25, "Embedding", "tok_emb"),              # 'Every ef': 'e' read twice; pos_emb's ids never repeat
    ("attention-scale", 13, "Attention", "trf_blocks.0.att"),
])
def test_break_names_the_sabotaged_op_as_the_first_departure_and_gradcheck_fails_on_it(mode, step, op, module):
    code, out = run_cli("--model", "micro", "--break", mode)
    assert code == 0, out
    m = re.search(r"^first departure: step (\d+) (\w+) \(([\w.]+)\) (tinygrad_gpt/explain/sabotage\.py:(\d+))$", out, re.M)
    assert m, out
    assert (int(m.group(1)), m.group(2), m.group(3)) == (step, op, module)
    cls = sabotage.MODES[mode][1]
    source = (explain.ROOT / "tinygrad_gpt/explain/sabotage.py").read_text(encoding="utf-8").splitlines()
    assert source[int(m.group(5)) - 1].strip().startswith("def backward(")          # the broken backward's line
    owner = next(t for t in reversed(source[:int(m.group(5))]) if t.startswith("class "))
    assert owner.startswith(f"class {cls.__name__}(")                               # of the mode's subclass
    rows = {int(r[0]): r for r in re.findall(r"^\s+(\d+)  (\w+)\s+(\S+)\s+(\S+)  (.*)$", out, re.M)}
    assert len(rows) == 26
    for s in range(1, step):                                      # before it, the two runs are one
        assert "*" not in rows[s][3] + rows[s][4], rows[s]
    assert "*" not in rows[step][3] and "*" in rows[step][4] and "<- first departure" in rows[step][4]
    engine = re.search(rf"^gradcheck {op} \(the engine's: {op}\.backward\).*: (\w+)", out, re.M)
    broken = re.search(rf"^gradcheck {op} \(the sabotaged: {cls.__name__}\.backward\).*: FAILS: gradcheck: input 0 ", out, re.M)
    assert engine and engine.group(1) == "passes" and broken, out


def test_break_none_swaps_in_a_correct_backward_and_nothing_departs():
    code, out = run_cli("--model", "micro", "--break", "none")
    assert code == 0
    assert out.rstrip().endswith("first departure: none (the two backwards agree at every op)")
    rows = re.findall(r"^\s+\d+  \w+ .*$", out, re.M)
    assert len(rows) == 26 and not any("*" in r for r in rows)


def test_the_sabotaged_backwards_are_wrong_and_the_no_op_is_right_under_gradcheck():
    rng = np.random.default_rng(0)
    x, w, b = (Tensor(rng.standard_normal(s), requires_grad=True) for s in ((3, 5), (5,), (5,)))
    assert gradcheck(lambda *t: sabotage.LayerNormCorrect.apply(*t), [x, w, b])
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda *t: sabotage.LayerNormMeanDropped.apply(*t), [x, w, b])
    W = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    assert gradcheck(lambda W: sabotage.EmbeddingAssigned.apply(W, Tensor(np.array([0, 1, 2]))), [W])  # no repeat: right
    with pytest.raises(GradcheckError, match=r"input 0 \(4, 3\), element \(1, "):
        gradcheck(lambda W: sabotage.EmbeddingAssigned.apply(W, Tensor(np.array([1, 2, 1]))), [W])
    q, k, v = (Tensor(rng.standard_normal((1, 1, 4, 4)), requires_grad=True) for _ in range(3))
    assert gradcheck(lambda q, k, v: F.Attention.apply(q, k, v), [q, k, v])
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda q, k, v: sabotage.AttentionUnscaled.apply(q, k, v), [q, k, v])


def test_break_refuses_dropout_and_unknown_modes(capsys):
    assert explain.main(["--model", "micro", "--break", "attention-scale", "--drop-rate", "0.1"]) == 2
    assert "--break runs without dropout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        explain.main(["--model", "micro", "--break", "gelu-sign"])


def test_gradcheck_inputs_are_cut_to_what_the_op_read(monkeypatch):
    """A tiny or 124M embedding table has millions of numbers, two forwards each: gradcheck gets
    the rows the ids read (renumbered), where the repeated id still fails the sabotaged backward."""
    monkeypatch.setattr(sabotage, "GRADCHECK_NUMBERS", 16)
    W, ids = np.random.default_rng(1).standard_normal((50, 4)), np.array([[7, 3, 7]])
    (w, i), cut = sabotage.small_inputs(F.Embedding, [W, ids])
    assert w.shape == (2, 4) and i.tolist() == [[1, 0, 1]] and "the 2 rows its ids read" in cut
    np.testing.assert_array_equal(w[i], W[ids])                       # the same gather
    x = np.zeros((1, 10, 4))
    (x2, *_), cut = sabotage.small_inputs(F.LayerNorm, [x, np.ones(4), np.zeros(4)])
    assert x2.shape == (2, 4) and "first 2 rows" in cut
    seen = [(type("ctx", (), {"parents": (None,)})(), [W, ids])]
    lines = sabotage.gradcheck_lines("embedding-assign", seen)
    assert "passes" in lines[0] and "FAILS: gradcheck: input 0 (2, 4), element (1, " in lines[1], lines
