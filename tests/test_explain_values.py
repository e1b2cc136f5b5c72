"""explain --values / --step / --param's chain count / --html on the micro model: the arrays the
trace prints are the gradients, checked against ones computed here independently (NumPy, float64).

- the loss op's dlogits = (softmax(logits) - onehot(targets)) / N, from the logits alone;
- the output head's dx = dlogits W and dW = dlogitsᵀ h, h read with a module forward hook;
- norm1's gradient is the sum of what W_query, W_key and W_value sent back (accumulation);
- every parameter's recorded gradient is the one backward left in p.grad;
- the chain count equals the number of paths found by enumerating them one by one.
"""
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

from tinygrad_gpt import GPTModel, explain, get_config, manual_seed
from tinygrad_gpt.char_tokenizer import micro_text, micro_tokenizer
from tinygrad_gpt.explain import render_html, render_text
from tinygrad_gpt.explain.trace import consumers


@pytest.fixture(scope="module")
def micro():
    """The micro model on the first 8 characters of its sentence, traced with every array kept,
    and the final layer norm's output h (what the output head read), seen by a module hook."""
    ids = np.array(micro_tokenizer().encode(micro_text()), dtype=np.int64)
    x, y = ids[None, :8], ids[None, 1:9]
    manual_seed(123)
    model = GPTModel(get_config("micro"))
    seen = {}
    with model.final_norm.register_forward_hook(lambda m, args, out: seen.update(h=out.data.copy())):
        trace = explain.trace_backward(model, x, y, keep_values=render_text.MAX_PRINTED)
    logits = np.asarray(model(x).data, dtype=np.float64)                    # (1, 8, 17), a second forward
    return model, trace, x, y, logits, seen["h"]


def test_the_loss_op_returns_softmax_minus_onehot_over_n(micro):
    _, trace, _, y, logits, _ = micro
    loss = trace.ops[0]
    assert loss.name == "CrossEntropy" and loss.out_grad.shape == () and float(loss.out_grad) == 1.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(17)[y]                                                   # (1, 8, 17)
    expected = (p - onehot) / y.size                                         # mean over N = 8 targets
    got = loss.inputs[0].grad
    print("worst |dlogits - (softmax - onehot)/N|:", np.abs(got - expected).max())
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert loss.inputs[1].grad is None                                       # the targets get none


def test_the_output_head_returns_dlogits_w_and_dlogits_t_h(micro):
    model, trace, _, _, _, h = micro
    head = trace.ops[1]
    assert (head.name, head.module) == ("Linear", "out_head")
    dlogits = trace.ops[0].inputs[0].grad.reshape(8, 17).astype(np.float64)
    W = model.out_head.weight.data.astype(np.float64)                        # (17, 8)
    np.testing.assert_allclose(head.out_grad.reshape(8, 17), dlogits, atol=1e-7)   # what step 1 returned
    np.testing.assert_allclose(head.inputs[0].grad.reshape(8, 8), dlogits @ W, atol=1e-6)
    np.testing.assert_allclose(head.inputs[1].grad, dlogits.T @ h.reshape(8, 8), atol=1e-6)


def test_every_recorded_parameter_gradient_is_what_backward_left(micro):
    model, trace, *_ = micro
    params = dict(model.named_parameters())
    recorded = {i.param: i.grad for op in trace.ops for i in op.inputs if i.param and i.grad is not None}
    assert sorted(recorded) == sorted(params)                                # all 18, every one small
    for name, g in recorded.items():
        np.testing.assert_array_equal(g, params[name].grad, err_msg=name)


def test_norm1s_gradient_is_the_sum_of_the_three_contributions(micro):
    _, trace, *_ = micro
    norm1 = next(op for op in trace.ops if op.module == "trf_blocks.0.norm1")
    names = [c.module for c in norm1.contributions]
    assert sorted(names) == ["trf_blocks.0.att.W_key", "trf_blocks.0.att.W_query", "trf_blocks.0.att.W_value"]
    total = sum(c.grad.astype(np.float64) for c in norm1.contributions)
    np.testing.assert_allclose(norm1.out_grad, total, atol=1e-7)
    assert [c.step for c in norm1.contributions] == sorted(c.step for c in norm1.contributions)
    line = render_text.contributions_line(norm1)
    assert line.startswith("norm1 output: sum of 3 contributions: ") and "W_query " in line, line
    for c in norm1.contributions:
        assert f"{c.module.rsplit('.', 1)[-1]} {c.norm:.3g} (step {c.step})" in line
    # an op read once has one contribution and no sum line
    head = trace.ops[1]
    assert len(head.contributions) == 1 and render_text.contributions_line(head) is None
    # the sums sit exactly where a tensor has several readers
    readers = consumers(trace)
    assert [op.step for op in trace.ops if len(op.contributions) > 1] == \
           [op.step for op in trace.ops if len(readers[op.node]) > 1]


def run_cli(*argv, stdin=None):
    out = io.StringIO()
    code = explain.main(list(argv), file=out, stdin=stdin)
    return code, out.getvalue()


def printed_array(lines, start):
    """The numbers of the array printed from lines[start] on (until the next label line), in
    the array's order: rows labelled by their index under a heading of column indices, a wide
    row cut into column groups ("columns 0-9 of 17:") put back together."""
    rows, order = {}, []
    for line in lines[start:]:
        if re.match(r"^\s+columns \d+-\d+ of \d+:$", line):
            continue
        m = re.match(r"^\s*([\w, ]*?) \|(.*)$", line)
        if m is None:
            m = re.match(r"^\s+(-?\d[\d.e+-]*)$", line)             # a scalar
            if m and not order:
                return np.array([float(m.group(1))])
            break
        label, rest = m.group(1).strip(), m.group(2)
        if not re.fullmatch(r"[\d,]*", label):                       # the heading: column indices
            continue
        if label not in rows:
            rows[label] = []
            order.append(label)
        rows[label] += [float(v) for v in rest.split()]
    return np.array([v for label in order for v in rows[label]])


def test_cli_values_prints_arrays_for_every_op_and_the_closing_table(micro):
    _, trace, _, _, _, _ = micro
    code, out = run_cli("--model", "micro", "--values")
    assert code == 0
    lines = out.splitlines()
    assert "GPT-2 micro: 1,200 parameters in 18 tensors, 1 block," in out
    received = [k for k, line in enumerate(lines) if "received dL/d(output)" in line]
    assert len(received) == len(trace.ops) == 26
    assert "not printed" not in out                                          # micro: every array whole
    # the printed dlogits are the independent formula's, to the 4 digits printed
    k = next(k for k, line in enumerate(lines) if "returned dL/d(logits) 1x8x17:" in line)
    np.testing.assert_allclose(printed_array(lines, k + 1), trace.ops[0].inputs[0].grad.ravel(), rtol=1e-3, atol=1e-9)
    # every gradient an op returns is printed: one label per input that gets one
    returned = sum(1 for line in lines if re.match(r"^\s+returned dL/d", line))
    assert returned == sum(1 for op in trace.ops for i in op.inputs if i.grad_shape is not None)
    assert "<- norm1 output: sum of 3 contributions: W_query" in out
    assert "parameters reached: 18 of 18 tensors, 1,200 of 1,200 numbers, each tensor once" in out


def test_cli_values_shows_norms_only_for_big_arrays():
    code, out = run_cli("--context-length", "4", "--values", "--depth", "3")
    assert code == 0
    assert re.search(r"returned dL/d\(logits\) 1x4x50257:\n\s+norm [\d.]+ \(201,028 numbers, more than "
                     f"{render_text.MAX_PRINTED}: not printed\\)", out)
    assert "returned dL/d(final_norm.scale) 64:" in out                     # 64 numbers: printed
    assert re.search(r"returned dL/d\(out_head\.weight\) 50257x64:\n\s+norm [\d.]+ \(3,216,448 numbers", out)


def test_step_pauses_after_each_op_and_q_stops_backward(tmp_path):
    """Piped stdin: two Enters, then q: three ops listed, backward stopped there."""
    cmd = [sys.executable, str(REPO / "examples" / "explain_backward.py"), "--model", "micro", "--step"]
    done = subprocess.run(cmd, input="\n\nq\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("Enter: next op, q: stop >") == 3
    steps = re.findall(r"^\s+(\d+)  [A-Z]\w+ ", out, re.M)
    assert steps == ["1", "2", "3"], steps
    assert "stopped after step 3 (q)" in out and "parameters reached" not in out
    # end of input: the pauses stop and backward runs to the end
    done = subprocess.run(cmd, input="\n", capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "(end of input: running to the end)" in done.stdout
    assert len(re.findall(r"^\s+\d+  [A-Z]\w+ ", done.stdout, re.M)) == 26
    assert "each tensor once" in done.stdout


def all_paths(trace, name):
    """The chains from the loss to parameter `name`, counted one by one (a depth-first walk)."""
    readers = consumers(trace)
    root = trace.ops[0].node
    start = next(i.node for op in trace.ops for i in op.inputs if i.param == name)

    def count(node):
        if node == root:
            return 1
        return sum(count(trace.ops[s - 1].node) for s, _ in readers[node])
    return count(start)


@pytest.mark.parametrize("model, name, n", [("micro", "trf_blocks.0.att.W_query.weight", 2),
                                            ("micro", "tok_emb.weight", 8),
                                            ("tiny", "trf_blocks.0.att.W_query.weight", 16)])
def test_param_explains_its_chain_count(model, name, n):
    ids = np.arange(9)[None] % 17
    cfg = get_config(model)
    cfg["context_length"] = 8
    manual_seed(0)
    m = GPTModel(cfg)
    trace = explain.trace_backward(m, ids[:, :8], ids[:, 1:])
    _, count = explain.chain(trace, name)
    assert count == n == all_paths(trace, name)
    lines = render_text.why_chains_lines(trace, name, count)
    assert lines[0].startswith(f"why {n} chains:") and lines[-1].endswith(f"{n} chains reach {name}")
    sums = [line for line in lines if re.search(r": \d+ = ", line)]
    for line in sums:                                                        # each sum adds up
        total, parts = re.search(r": (\d+) = (.*)$", line).groups()
        assert int(total) == sum(int(p) for p in re.findall(r"(\d+) through step", parts)), line
    assert int(re.search(r": (\d+) = ", sums[-1]).group(1)) == n             # the last one is the count
    if model == "tiny":
        assert "6 through step 25 LayerNorm trf_blocks.1.norm1 (whose output 3 ops read)" in "\n".join(lines)


def test_cli_html_writes_the_page_with_values_and_the_chain(tmp_path):
    name = "trf_blocks.0.att.W_query.weight"
    page = tmp_path / "micro.html"
    code, out = run_cli("--model", "micro", "--param", name, "--html", str(page))
    assert code == 0 and f"wrote {page} (26 ops, values, the chain of {name})" in out
    text = page.read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
                      .group(1).replace("<\\/", "</"))
    assert len(data["ops"]) == 26
    assert all(op["out_grad_values"] is not None for op in data["ops"])     # micro: every array on the page
    assert data["chain"]["param"] == name and data["chain"]["count"] == 2
    assert data["chain"]["steps"] == [1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 15, 16]   # loss ... W_query
    assert render_html.MAX_VALUES >= render_text.MAX_PRINTED


# ----------------------------------------------------------------------------- readable --values: filters, widths, names
def listed_steps(out):
    return [int(s) for s in re.findall(r"^\s+(\d+)  [A-Z]\w+ ", out, re.M)]


def test_op_and_module_filters_list_only_those_ops(micro):
    _, trace, *_ = micro
    code, out = run_cli("--model", "micro", "--values", "--op", "layernorm")
    assert code == 0
    want = [op.step for op in trace.ops if op.name == "LayerNorm"]
    assert listed_steps(out) == want == [3, 8, 23]
    assert f"(--op layernorm: 3 of {len(trace.ops)} ops listed)" in out
    assert "parameters reached: 18 of 18 tensors" in out                    # the totals still count all
    code, out = run_cli("--model", "micro", "--module", "trf_blocks.0.att")
    assert code == 0
    assert listed_steps(out) == [op.step for op in trace.ops if (op.module or "").startswith("trf_blocks.0.att")]
    assert len(listed_steps(out)) == 13 and "trf_blocks.0.ff" not in out.split("ops visited")[0]
    code, out = run_cli("--model", "micro", "--op", "Linear", "--module", "trf_blocks.0.att")
    assert listed_steps(out) == [10, 16, 19, 22]


def test_unknown_filters_and_worked_without_values_are_one_line_errors(capsys):
    for argv, message in [(["--op", "LayerNrm"], "--op 'LayerNrm' is not an op of the engine; did you mean LayerNorm"),
                          (["--module", "trf_block.0.att"], "--module 'trf_block.0.att' is not a module of the micro model; did you mean"),
                          (["--worked", "LayerNorm"], "--worked works with --values")]:
        assert explain.main(["--model", "micro"] + argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("columns", [80, 240])
def test_values_rows_fit_the_terminal_and_carry_column_indices(micro, monkeypatch, columns):
    """No line of an array is wider than the terminal: a 17-wide row is cut into column groups
    (each with its column indices) at 80 columns and printed whole at 240; the numbers, put back
    together, are the array's, in its order."""
    _, trace, *_ = micro
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out = run_cli("--model", "micro", "--values", "--depth", "7")
    assert code == 0
    lines = out.splitlines()
    array_rows = [line for line in lines if re.match(r"^\s*[\w, ]* \|", line)]
    assert array_rows and max(len(line) for line in array_rows) <= columns
    k = next(k for k, line in enumerate(lines) if "returned dL/d(logits) 1x8x17:" in line)
    np.testing.assert_allclose(printed_array(lines, k + 1), trace.ops[0].inputs[0].grad.ravel(), rtol=1e-3, atol=1e-9)
    head = [line.split("|")[1].split() for line in lines[k + 1:k + 4] if re.match(r"^\s+row \|", line)]
    if columns == 80:
        assert "columns 0-4 of 17:" in lines[k + 1] and head[0] == ["0", "1", "2", "3", "4"]   # 5 fit in 80
    else:
        assert head[0] == [str(j) for j in range(17)]                        # one row, whole
    # the 32-wide feed-forward rows
    k = next(k for k, line in enumerate(lines) if "returned dL/dx 1x8x32:" in line)
    ff = next(op for op in trace.ops if op.module == "trf_blocks.0.ff.layers.2")
    np.testing.assert_allclose(printed_array(lines, k + 1), ff.inputs[0].grad.ravel(), rtol=1e-3, atol=1e-9)


def test_adds_inputs_are_named_by_what_they_carry_and_attentions_by_q_k_v():
    code, out = run_cli("--model", "micro", "--values")
    assert code == 0
    assert "returned dL/da 1x8x8, a = the residual stream after the attention shortcut (this block's first Add):" in out
    assert "returned dL/db 1x8x8, b = the feed-forward branch's output (Linear trf_blocks.0.ff.layers.2):" in out
    assert "returned dL/da 1x8x8, a = the residual stream: the block's input (the embeddings' Add):" in out
    assert "returned dL/db 1x8x8, b = the attention branch's output (Linear trf_blocks.0.att.out_proj):" in out
    assert "returned dL/da 1x8x8, a = the token embeddings (tok_emb):" in out
    assert "b = the positional embeddings (pos_emb):" in out
    for name in "qkv":
        assert f"returned dL/d{name} 1x2x8x4:" in out
    lines = out.splitlines()
    k = next(k for k, line in enumerate(lines) if "returned dL/dq 1x2x8x4:" in line)
    dq = printed_array(lines, k + 1).reshape(2, 8, 4)
    assert np.all(dq[:, 0] == 0) and np.all(np.abs(dq[:, 1:]).sum(-1) > 0)
    assert "dq's row 0 is zero in every head: position 0 attends to itself alone" in out


# ----------------------------------------------------------------------------- --worked: one row, checkable by hand
def worked_values(out):
    """{name: numbers} from the --worked lines: `name = [a b c]` or `name = a`."""
    found, lines = {}, []
    for line in out.splitlines():                    # a vector cut at the width goes on under it: join
        if lines and re.match(r"^\s+[-\d]", line) and "|" not in line and "=" not in line:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    for line in lines:
        m = re.match(r"^\s+(.+?) = (?:.* = )?(\[[-\d.e+ ]+\]|-?[\d.e+-]+)(?:\s.*)?$", line)
        if m:
            found.setdefault(m.group(1).strip(), np.array([float(v) for v in m.group(2).strip("[]").split()]))
    return found


def test_worked_layer_norm_pieces_recompute_dx(micro):
    _, trace, *_ = micro
    code, out = run_cli("--model", "micro", "--values", "--op", "LayerNorm", "--worked", "LayerNorm")
    assert code == 0
    assert "worked numbers: row 0 of step 3 LayerNorm (final_norm)" in out
    assert out.count("worked numbers:") == 1                                 # the first LayerNorm only
    v = worked_values(out.split("worked numbers:")[1])
    x, mu, var, r = v["x (row 0 of the input, 8 wide)"], v["μ"], v["σ²"], v["r"]
    xhat, dy, w, dxhat = v["x̂"], v["dy (row 0 of what it received)"], v["w"], v["dx̂"]
    m1, m2, dx = v["mean(dx̂)"], v["mean(dx̂ ⊙ x̂)"], v["dx"]
    np.testing.assert_allclose(mu, x.mean(), rtol=1e-5)                      # each line from the ones above
    np.testing.assert_allclose(var, ((x - mu) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(r, 1 / np.sqrt(var + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(xhat, (x - mu) * r, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dxhat, dy * w, rtol=1e-5)
    np.testing.assert_allclose(m1, dxhat.mean(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(m2, (dxhat * xhat).mean(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(dx, r * (dxhat - m1 - xhat * m2), rtol=1e-4, atol=1e-8)
    engine = trace.ops[2].inputs[0].grad.reshape(8, 8)[0]                     # what the engine returned
    np.testing.assert_allclose(dx, engine, rtol=1e-4, atol=1e-8)


def test_worked_cross_entropy_and_attention_pieces_add_up(micro):
    _, trace, _, y, logits, _ = micro
    code, out = run_cli("--model", "micro", "--values", "--worked", "CrossEntropy", "--depth", "1")
    assert code == 0
    v = worked_values(out.split("worked numbers:")[1])
    z, p, d = v["z (row 0 of the logits, 17 wide)"], v["p"], v["dlogits"]
    np.testing.assert_allclose(z, logits[0, 0], rtol=1e-5, atol=1e-6)
    lse = float(re.search(r"lse\(z\) = .* = (-?[\d.]+)$", out, re.M).group(1))
    np.testing.assert_allclose(p, np.exp(z - lse), rtol=1e-4)
    t = int(re.search(r"^\s+t = (\d+):", out, re.M).group(1))
    assert t == y[0, 0]
    np.testing.assert_allclose(d, (p - np.eye(17)[t]) / 8, rtol=1e-4, atol=1e-9)

    code, out = run_cli("--model", "micro", "--values", "--op", "Attention", "--worked", "Attention")
    assert code == 0
    rows = out.split("worked numbers:")[1].split("  row ")
    for k, text in ((1, rows[1]), (0, rows[2])):
        v = worked_values(text)
        yy, dd = v["y"], v["dy"]
        np.testing.assert_allclose(yy.sum(), 1, rtol=1e-5)
        np.testing.assert_allclose(v["dy ⊙ y"], dd * yy, rtol=1e-4, atol=1e-10)
        np.testing.assert_allclose(v["rowsum(dy ⊙ y)"], (dd * yy).sum(), rtol=1e-4, atol=1e-10)
        np.testing.assert_allclose(v["ds"], yy * (dd - (dd * yy).sum()), rtol=1e-3, atol=1e-9)
    assert np.all(worked_values(rows[2])["ds"] == 0) and "why dq's row 0 is zero" in out
