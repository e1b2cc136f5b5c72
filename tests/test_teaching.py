"""Issue 35: optimizer.step() taught (explain --optimizer, --worked AdamW), a learner's own op
trained in the model (explain --use-op, functional.use_op), and the teaching pages' claims
checked against what the code does (the graph's size, the reading path's line counts, the
explain command's help, pretrain's closing lines)."""
import io
import re
import sys

import numpy as np
import pytest
from helpers import REPO

import tinygrad_gpt as tg
from tinygrad_gpt import explain, functional as F
from tinygrad_gpt.kernels import reference, use
from tinygrad_gpt.tensor import topological_order

SOLUTIONS = REPO / "examples" / "walkthrough_solutions.py"


def run_cli(*argv):
    out = io.StringIO()
    code = explain.main(list(argv), file=out)
    return code, out.getvalue()


# ----------------------------------------------------------------------------- explain --optimizer
def engine_step_by_hand(lr=4e-4, wd=0.1):
    """The micro model's first AdamW step redone here: the same batch, reference.adamw_step on
    float32 copies. {name: (g, m, v, new p)}."""
    from tinygrad_gpt.char_tokenizer import MICRO_SENTENCE
    from tinygrad_gpt.data import one_batch
    from tinygrad_gpt.tokenizer import tokenizer_for
    cfg = tg.get_config("micro")
    x, y = one_batch(MICRO_SENTENCE * 10, tokenizer_for(cfg), 1, 8)
    tg.manual_seed(123)
    model = tg.GPTModel(cfg).train()
    with use("numpy"):
        F.cross_entropy(model(x), y).backward()
    out = {}
    for name, p in model.named_parameters():
        pr, m, v = p.data.copy(), np.zeros_like(p.data), np.zeros_like(p.data)
        reference.adamw_step(pr, p.grad, m, v, lr, 0.9, 0.999, 1e-8, wd, 1)
        out[name] = (p.grad.copy(), m, v, pr, p.data.copy())
    return out


def test_optimizer_prints_every_parameters_step_equal_to_reference_adamw_step():
    code, out = run_cli("--model", "micro", "--optimizer", "--depth", "0")
    assert code == 0, out
    step = out[out.index("optimizer.step(): AdamW"):]
    rows = re.findall(r"^  ([\w.]+) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+)$", step, re.M)
    by_hand = engine_step_by_hand()
    assert [r[0] for r in rows] == list(by_hand), rows
    for name, *numbers in rows:
        g, m, v, p_new, p_old = by_hand[name]
        first = (0,) * g.ndim
        expected = [g[first], m[first], v[first], m[first] / 0.1, v[first] / 1e-3, p_new[first] - p_old[first]]
        got = [float(t) for t in numbers]
        # printed to 4 significant digits; the update is a difference of two float32s
        assert np.allclose(got, expected, rtol=2e-3, atol=2e-9), (name, got, expected)
    diffs = re.findall(r"the engine's new weight - reference\.adamw_step's: (\S+)$", out, re.M)
    assert len(diffs) == len(by_hand) and all(float(d) == 0.0 for d in diffs)   # numpy kernels: the same code
    assert re.search(r"^every parameter: .* largest difference 0; against the float64 formula above "
                     r"\(weights and moments\) (\S+)$", " ".join(step.split("\n  ")), re.M)
    assert all(len(line) <= 120 for line in step.splitlines())


def test_worked_adamw_substitutes_one_weights_numbers_and_ends_with_the_difference():
    code, out = run_cli("--model", "micro", "--worked", "AdamW", "--depth", "0")
    assert code == 0, out
    lines = out.rstrip().splitlines()
    m = re.match(r"  engine: ([\w.]+)\[(\d+), (\d+)\] = (\S+)  \(largest difference (\S+): float32 against float64\)",
                 lines[-1])
    assert m, lines[-1]
    name, i, j = m.group(1), int(m.group(2)), int(m.group(3))
    g, _, _, p_new, p_old = engine_step_by_hand()[name]
    assert abs(g[i, j]) == np.abs(g).max()                          # the weight with the largest |g|
    assert float(m.group(4)) == pytest.approx(float(p_new[i, j]), rel=1e-7)
    assert float(m.group(5)) < 1e-6
    new = float(re.search(r"p - lr m̂ / \(√v̂ \+ eps\) = .* = (\S+)$", out, re.M).group(1))
    assert new == pytest.approx(float(p_new[i, j]), abs=1e-7)
    assert "eps outside the root" in out and "decay first" in out


# ----------------------------------------------------------------------------- --use-op
NO_MEAN = '''
import numpy as np
from tinygrad_gpt import Function

class LayerNorm(Function):
    def forward(ctx, x, w, b, eps=1e-5):
        x2 = x.reshape(-1, x.shape[-1])
        mean = x2.mean(axis=1, keepdims=True)
        rstd = (((x2 - mean) ** 2).mean(axis=1, keepdims=True) + eps) ** -0.5
        ctx.save_for_backward(x2, w, mean, rstd)
        return (((x2 - mean) * rstd) * w + b).reshape(x.shape)

    def backward(ctx, dy):
        x2, w, mean, rstd = ctx.saved
        dy2 = dy.reshape(x2.shape)
        xhat = (x2 - mean) * rstd
        dxhat = dy2 * w
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))   # no - mean(dxhat)
        return dx.reshape(dy.shape), (dy2 * xhat).sum(0), dy2.sum(0)
'''


def test_use_op_with_the_notebooks_layer_norm_departs_nowhere_and_trains_to_the_engines_loss():
    code, out = run_cli("--model", "micro", "--use-op", f"{SOLUTIONS}:LayerNorm", "--train-steps", "20")
    assert code == 0, out
    assert "first departure: none (your backward and the engine's agree at every op)" in out
    assert re.search(r"^gradcheck LayerNorm \(yours\) on its inputs .*: passes$", out, re.M)
    curves = [(float(a), float(b)) for a, b in re.findall(r"^ +\d+ +(\d+\.\d{7}) +(\d+\.\d{7}) +\S+$", out, re.M)]
    assert len(curves) == 20
    assert curves[-1][0] < curves[0][0] - 1.0                       # it trains
    assert max(abs(a - b) for a, b in curves) < 1e-6
    worst = float(re.search(r"^largest loss difference over 20 steps: (\S+)$", out, re.M).group(1))
    assert worst < 1e-6


def test_use_op_with_a_layer_norm_missing_the_means_path_departs_at_layer_norm_and_fails_gradcheck(tmp_path):
    broken = tmp_path / "no_mean.py"
    broken.write_text(NO_MEAN, encoding="utf-8")
    code, out = run_cli("--model", "micro", "--use-op", f"{broken}:LayerNorm")
    assert code == 0, out
    m = re.search(r"^first departure: step (\d+) LayerNorm \(final_norm\) (.*):(\d+)$", out, re.M)
    assert m and int(m.group(1)) == 3 and m.group(2).endswith("no_mean.py"), out
    assert "def backward" in NO_MEAN.splitlines()[int(m.group(3)) - 1]
    assert re.search(r"^gradcheck LayerNorm \(the engine's\) .*: passes$", out, re.M)
    assert re.search(r"^gradcheck LayerNorm \(yours\) .*: FAILS: gradcheck: input 0 ", out, re.M)


def test_use_op_restores_the_engines_op_and_refuses_a_class_it_cannot_place(tmp_path):
    class GELU(tg.Function):
        def forward(ctx, x):
            return x

        def backward(ctx, g):
            return g
    with F.use_op(GELU):
        assert type(F.gelu(tg.Tensor(np.ones(3), requires_grad=True))._ctx) is GELU
    assert type(F.gelu(tg.Tensor(np.ones(3), requires_grad=True))._ctx) is F.GELU
    with pytest.raises(ValueError, match="named after one of"):
        with F.use_op(type("Gelu", (tg.Function,), {})):
            pass
    other = tmp_path / "mine.py"
    other.write_text("from tinygrad_gpt import Function\nclass MyNorm(Function):\n    pass\n", encoding="utf-8")
    for spec, words in ((f"{other}:MyNorm", "name it after the engine op"), (f"{other}:Nope", "has no Nope; it has MyNorm"),
                        (f"{tmp_path}/absent.py:LayerNorm", "no file")):
        err = io.StringIO()
        stderr, sys.stderr = sys.stderr, err
        try:
            out = io.StringIO()
            assert explain.main(["--model", "micro", "--use-op", spec], file=out) == 2
        finally:
            sys.stderr = stderr
        assert words in err.getvalue() and err.getvalue().count("\n") == 1 and out.getvalue() == ""


# ----------------------------------------------------------------------------- what the pages claim
def graph_of(n_layers):
    """A GPT-2 124M graph's shape (its layers, dropout 0.1) on narrow arrays: (tensors in the
    topological order, ops on its longest chain)."""
    cfg = tg.get_config("124M")
    cfg.update(emb_dim=24, n_heads=2, vocab_size=50, context_length=4, n_layers=n_layers)
    tg.manual_seed(0)
    model = tg.GPTModel(cfg).train()
    ids = np.zeros((1, 4), dtype=np.int64)
    order = topological_order(F.cross_entropy(model(ids), ids))
    depth = {}
    for node in order:                                # inputs first: a node's depth follows its parents'
        parents = [depth[id(p)] for p in node._ctx.parents if p.requires_grad] if node._ctx is not None else []
        depth[id(node)] = 1 + max(parents, default=-1) if node._ctx is not None else 0
    return len(order), max(depth.values())


def test_the_graph_size_the_docs_give_is_the_12_layer_graphs_and_within_the_recursion_limit():
    tensors, chain = graph_of(12)
    assert (tensors, chain) == (432, 198)
    assert chain < sys.getrecursionlimit()
    for page in ("README.md", "docs/backward.md", "tinygrad_gpt/tensor.py"):
        text = " ".join((REPO / page).read_text(encoding="utf-8").split())
        assert f"{tensors} tensors" in text and f"{chain}" in text, page
        assert "thousands of nodes" not in text and "thousands of tensors" not in text, page


def test_reading_paths_line_counts_are_the_files():
    text = (REPO / "docs" / "reading.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \w+ \| `(tinygrad_gpt/[\w/]+\.py)` \| (\d+) \|", text, re.M)
    counts = {path: len((REPO / path).read_text(encoding="utf-8").splitlines()) for path, _ in rows}
    assert {p: int(n) for p, n in rows} == counts, f"docs/reading.md should say {counts}"
    words = {6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
    assert f"Read these {words[len(rows)]} files" in text
    assert f"Total: {sum(counts.values()):,} lines for the {words[len(rows)]} files" in text


def test_explain_help_gives_each_models_own_dropout():
    from tinygrad_gpt.model import CONFIGS
    help_text = " ".join(explain.build_parser().format_help().split())
    said = re.search(r"--drop-rate DROP_RATE dropout \(default: the model's own, ([^)]*)\)", help_text).group(1)
    usual, *others = said.split("; ")
    named = dict(o.split(": ") for o in others)
    for name, cfg in CONFIGS.items():
        assert float(named.get(name, usual)) == cfg["drop_rate"], name


def test_watching_backward_counts_the_notebooks_exercises():
    import json
    cells = json.loads((REPO / "examples" / "backward_walkthrough.ipynb").read_text(encoding="utf-8"))["cells"]
    headings = [line for c in cells if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if re.match(r"### Exercise \d+", line)]
    words = {3: "Three", 6: "Six", 7: "Seven", 8: "Eight"}
    page = (REPO / "docs" / "watching-backward.md").read_text(encoding="utf-8")
    assert f"{words[len(headings)]} exercises" in page


def test_train_py_does_not_claim_the_books_loop_line_for_line():
    import inspect

    from tinygrad_gpt import train
    assert "line for line" not in train.__doc__
    assert "train_model(" in inspect.getsource(train.train_model_simple)     # what its docstring says it does


# ----------------------------------------------------------------------------- --values: each array once, in the width
def printed_arrays(out):
    """[(label, numbers)] for every array --values printed: a label line ending in ':' and the
    rows under it (`label |` then numbers), column groups put back together."""
    found, label, rows = [], None, {}
    for line in out.splitlines() + [""]:
        m = re.match(r"^\s+([^|]*?)\s*\|((?:\s+-?[\d.e+-]+)+)$", line)
        if m and label is not None:
            if not re.match(r"^(row|col|head,pos|axes [\d,]+)$", m.group(1)):     # a heading: column indices
                rows.setdefault(m.group(1), []).extend(float(v) for v in m.group(2).split())
            continue
        if re.match(r"^\s+columns \d+-\d+ of \d+:$", line):
            continue
        if label is not None and rows:
            found.append((label, np.concatenate([rows[k] for k in rows])))
        label, rows = (line.strip(), {}) if line.rstrip().endswith(":") else (None, {})
    return found


def test_values_prints_each_array_once_within_120_columns_with_the_forward_arrays_backward_reads(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out = run_cli("--model", "micro", "--values")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 120
    arrays = printed_arrays(out)
    assert len(arrays) > 60
    seen = {}
    for label, numbers in arrays:
        if numbers.size < 2:                          # dL/dL = 1
            continue
        key = numbers.tobytes()
        assert key not in seen, f"printed twice: {seen.get(key)} and {label}"
        seen[key] = label
    again = re.findall(r"^\s+the same numbers as printed at step (\d+) \(([^)]*)\)", out, re.M)
    assert len(again) > 10                           # later mentions say where
    labels = [label for label, _ in arrays]
    for want in ("saved x2 8x8", "saved q 1x2x8x4", "saved k 1x2x8x4", "saved v 1x2x8x4", "saved att 1x2x8x8",
                 "saved mean 8", "saved rstd 8"):
        assert any(label.startswith(want) for label in labels), want
    # the saved arrays are the forward's: Linear out_head's x is the final norm's output
    from tinygrad_gpt.char_tokenizer import MICRO_SENTENCE
    from tinygrad_gpt.data import one_batch
    from tinygrad_gpt.tokenizer import tokenizer_for
    cfg = tg.get_config("micro")
    x, _ = one_batch(MICRO_SENTENCE * 10, tokenizer_for(cfg), 1, 8)
    tg.manual_seed(123)
    model = tg.GPTModel(cfg)
    with tg.no_grad(), use("numpy"):
        h = model.final_norm(model.trf_blocks(model.tok_emb(x) + model.pos_emb(np.arange(8))))
    head_x = next(n for label, n in arrays if label.startswith("saved x2 8x8"))   # step 2's, the first
    np.testing.assert_allclose(head_x, h.data.ravel(), rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- --worked for the fused ops and a broadcast Add
def worked_block(out):
    """The --worked lines, continuations joined (a line cut at the width goes on 4 columns deeper)."""
    text = out.split("worked numbers:")[1].split("\n\n")[0]
    joined = []
    for line in text.splitlines()[1:]:               # under the title line (itself cut, maybe)
        if not joined and not line.lstrip().startswith(("dx", "y", "dy", "out", "forward", "x")) \
                and line.startswith(" " * 22):
            continue                                 # the title's continuation
        indent = len(line) - len(line.lstrip())
        if joined and indent >= joined[-1][0] + 4:
            joined[-1][1] += " " + line.strip()
        else:
            joined.append([indent, line.strip()])
    return [t for _, t in joined]


def vector(text):
    return np.array([float(v) for v in text.strip("[]").split()])


@pytest.mark.parametrize("op, listed, extra", [("GELU", "GELU", []), ("Linear", "Linear", []),
                                               ("Embedding", "Embedding", []), ("Softmax", "Attention", []),
                                               ("Add", "Add", ["--batch-size", "2"])])
def test_worked_fused_ops_and_a_broadcast_add_end_with_the_difference_from_the_engine(op, listed, extra, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out = run_cli("--model", "micro", "--values", "--op", listed, "--worked", op, *extra)
    assert code == 0, out
    assert max(map(len, out.splitlines())) <= 120
    lines = worked_block(out)
    m = re.search(r"largest difference(?: from the engine:)? ([\d.e+-]+)\)?$", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) < 1e-6
    values = {}
    for line in lines:
        k = re.match(r"^(.+?) = (?:.* = )?(\[[-\d.e+ ]+\])", line)
        if k:
            values.setdefault(k.group(1), vector(k.group(2)))
    if op == "Embedding":                            # dW[v] is the sum of the rows it was read at
        rows = [v for name, v in values.items() if name.startswith("dout[")]
        assert len(rows) >= 2
        total = next(v for name, v in values.items() if name.startswith("dW["))
        np.testing.assert_allclose(total, np.sum(rows, axis=0), rtol=1e-5, atol=1e-9)
    if op == "Add":                                   # two copies (batch 2) summed
        copies = [v for name, v in values.items() if name.startswith("dout[")]
        assert len(copies) == 2
        np.testing.assert_allclose(values["db[0]"], copies[0] + copies[1], rtol=1e-5, atol=1e-9)
    if op == "GELU":
        dy = next(v for name, v in values.items() if name.startswith("dy[0"))
        np.testing.assert_allclose(values["dx"], dy * values["dy/dx"], rtol=1e-5, atol=1e-12)
    if op == "Softmax":
        y = next(v for name, v in values.items() if name.startswith("y = att") or name.startswith("y"))
        dy = next(v for name, v in values.items() if name.startswith("dy"))
        np.testing.assert_allclose(values["dx"], y * (dy - (dy * y).sum()), rtol=1e-4, atol=1e-10)


# ----------------------------------------------------------------------------- cmp: how an answer is off
def test_cmp_names_a_constant_factor_a_transpose_a_sign_and_a_missing_sum():
    from tinygrad_gpt.gradcheck import cmp
    rng = np.random.default_rng(0)
    engine = rng.standard_normal((4, 3))
    square = rng.standard_normal((3, 3))

    def said(mine, eng):
        out = io.StringIO()
        ok = cmp("g", mine, eng, file=out)
        return ok, out.getvalue()
    ok, text = said(engine / np.sqrt(8), engine)          # a 1/sqrt(D) too many
    assert not ok and "yours is 0.353553 x the engine's everywhere" in text and "1/ratio = 2.82843" in text
    ok, text = said(engine.T, engine)
    assert not ok and "it is the engine's transposed" in text
    ok, text = said(square.T, square)
    assert not ok and "yours is the engine's transposed" in text
    ok, text = said(-engine, engine)
    assert not ok and "yours is -1 x the engine's" in text
    ok, text = said(engine, engine.sum(0))               # unbroadcast forgotten
    assert not ok and "summed over the broadcast axes it would match" in text
    ok, text = said(engine + 1e-3 * rng.standard_normal((4, 3)), engine)   # just wrong: no hint
    assert not ok and text.count("\n") == 1
    ok, text = said(engine.copy(), engine)
    assert ok and text == "g        | exact: True  | approximate: True  | maxdiff: 0.0e+00\n"


def test_the_backward_page_picture_shows_the_code_as_it_is():
    """docs/backward_html.png shows Linear's backward as file:line in its side panel; the picture
    records that text (docs/make_backward_html_png.py writes it), and it must still be true."""
    from PIL import Image

    from tinygrad_gpt.explain.trace import source_location
    shown = Image.open(REPO / "docs" / "backward_html.png").text.get("backward code")
    assert shown == source_location(F.Linear.backward), \
        f"docs/backward_html.png shows {shown}: rerun python docs/make_backward_html_png.py"
