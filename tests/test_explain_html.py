"""explain/render_html.py: the records built from a trace, the page they make, and that page rendered
by a real browser (headless Chromium, offline): every op drawn with its step number, every
parameter named, no script error, a click target's details, folding and the --param chain.

The browser tests need Chromium (Debian: apt-get install chromium; .ci/run installs it): they skip
without it, and fail under TINYGRAD_GPT_REQUIRE_REFERENCE=1 (helpers.require).
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from helpers import require

from tinygrad_gpt import GPTModel, explain, get_config, manual_seed
from tinygrad_gpt.explain import render_html
from tinygrad_gpt.char_tokenizer import MICRO_SENTENCE, micro_tokenizer
from tinygrad_gpt.tensor import register_backward_hook, unbroadcast

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)


def trace_with_values(model_name="micro", T=8, seed=123):
    """A trace of one backward, plus the arrays each op received and returned (a second backward
    hook beside the tracer's: both see the ops in the same order)."""
    cfg = get_config(model_name)
    if model_name == "micro":
        ids = np.array(micro_tokenizer().encode(MICRO_SENTENCE))
    else:
        cfg["context_length"] = T
        ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], T + 1)
    manual_seed(seed)
    model = GPTModel(cfg)
    seen = []

    def hook(node, ctx, grad, input_grads):
        grads = tuple(input_grads) + (None,) * (len(ctx.parents) - len(input_grads))
        seen.append((np.array(grad), [None if g is None or not p.requires_grad else unbroadcast(np.asarray(g), p.shape)
                                      for p, g in zip(ctx.parents, grads)]))

    with register_backward_hook(hook):
        trace = explain.trace_backward(model, ids[None, :T], ids[None, 1:T + 1])
    assert len(seen) == len(trace.ops)
    return model, trace, {k + 1: v for k, v in enumerate(seen)}


@pytest.fixture(scope="module")
def micro():
    model, trace, values = trace_with_values("micro")
    return model, trace, render_html.records_from_trace(trace, values)


@pytest.fixture(scope="module")
def tiny():
    model, trace, _ = trace_with_values("tiny", T=16)
    return model, trace, render_html.records_from_trace(trace)


# ----------------------------------------------------------------------------- the records
def test_records_have_the_traces_steps_and_every_parameter_once(micro):
    model, trace, records = micro
    assert [r.step for r in records] == list(range(1, len(trace.ops) + 1)) and len(records) == 26
    reached = [name for r in records for name in r.params]
    assert sorted(reached) == sorted(name for name, _ in model.named_parameters())
    attention = next(r for r in records if r.op == "Attention")
    assert (attention.module, attention.block, attention.code) == ("trf_blocks.0.att", "trf_blocks.0",
                                                                   trace.ops[attention.step - 1].backward_at)


def test_parents_and_children_are_the_two_ends_of_each_edge(micro):
    _, _, records = micro
    by_step = {r.step: r for r in records}
    for r in records:
        for p in r.parents:
            assert p > r.step and r.step in by_step[p].children      # backward runs a reader first
        for c in r.children:
            assert r.step in by_step[c].parents
    assert records[0].children == [] and records[0].parents == [2]  # the loss reads the logits
    norm1 = next(r for r in records if r.module == "trf_blocks.0.norm1")
    qkv = [r.step for r in records if r.module in ("trf_blocks.0.att.W_query", "trf_blocks.0.att.W_key",
                                                    "trf_blocks.0.att.W_value")]
    assert norm1.children == sorted(qkv)                              # its gradient is their sum


def test_values_are_the_gradients_whose_norms_the_trace_printed(micro):
    _, trace, records = micro
    for r, op in zip(records, trace.ops):
        assert r.out_grad_values is not None
        assert np.linalg.norm(r.out_grad_values) == pytest.approx(op.out_grad_norm, rel=2e-3)
        for rec, inp in zip(r.inputs, op.inputs):
            if inp.grad_norm is not None:
                assert np.linalg.norm(rec.grad_values) == pytest.approx(inp.grad_norm, rel=2e-3)
    assert render_html.small_values(np.zeros(render_html.MAX_VALUES + 1)) is None


def test_the_page_is_one_file_that_loads_nothing(micro, tmp_path):
    _, trace, records = micro
    path = render_html.write_html(records, tmp_path / "page.html", title="micro", loss=trace.loss)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<script") == 3
    for fetches in ("<link", " src=", "@import", "fetch(", "XMLHttpRequest", "url(http", "href=\"http"):
        assert fetches not in page, fetches
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * 2   # the SVG namespace
    data = render_html.page_data(records, loss=trace.loss)
    assert len(data["ops"]) == 26 and data["folded"] is False


def test_out_of_order_records_are_refused(micro):
    _, _, records = micro
    with pytest.raises(ValueError, match="steps 1..26 in order"):
        render_html.page_data(records[1:] + records[:1])


# ----------------------------------------------------------------------------- in a browser
def render(path, fragment=""):
    """The DOM after the page's scripts ran, as headless Chromium dumps it (offline)."""
    browser = CHROMIUM or require("chromium", program=True)
    profile = path.parent / "chromium-profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-extensions",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
           path.resolve().as_uri() + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


def errors_in(dom):
    m = re.search(r'<pre id="errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert m, "the #errors element is missing"
    return m.group(1)


def op_nodes(dom):
    return re.findall(r'<g class="op[^"]*" data-step="(\d+)"', dom)


def test_chromium_draws_every_op_and_names_every_parameter(micro, tmp_path):
    model, trace, records = micro
    dom = render(render_html.write_html(records, tmp_path / "micro.html", title="micro", loss=trace.loss))
    assert errors_in(dom) == ""
    assert 'data-ready="1"' in dom                                    # the script ran to its end
    assert sorted(map(int, op_nodes(dom))) == list(range(1, len(trace.ops) + 1))
    for name, _ in model.named_parameters():
        assert f'data-param="{name}"' in dom, name                   # its node in the graph
        assert f'data-param-row="{name}"' in dom, name               # its row in the table
    assert "#13  Attention" in dom and f"{trace.loss:.4f}" in dom
    assert len(re.findall(r'<path [^>]*class="edge"', dom)) > len(trace.ops)


def test_chromium_shows_an_ops_details_with_its_values(micro, tmp_path):
    _, trace, records = micro
    dom = render(render_html.write_html(records, tmp_path / "micro.html"), "#step=13")
    assert errors_in(dom) == ""
    details = re.search(r'<div id="details">(.*?)</div>\s*<h2>Parameters', dom, re.S).group(1)
    assert "step 13: Attention" in details and trace.ops[12].backward_at in details
    assert details.count('<pre class="values">') == 4                # dL/d(out), dq, dk, dv
    assert "from step 12" in details and "the output of step 14" in details
    assert "sum of" not in details                                    # read once


def test_chromium_shows_where_gradients_add_up(micro, tmp_path):
    """norm1's output feeds W_query, W_key and W_value: its gradient is their sum, and the
    page lists the three contributions with their norms."""
    _, trace, records = micro
    norm1 = next(r for r in records if r.module == "trf_blocks.0.norm1")
    dom = render(render_html.write_html(records, tmp_path / "micro.html"), f"#step={norm1.step}")
    details = re.search(r'<div id="details">(.*?)</div>\s*<h2>Parameters', dom, re.S).group(1)
    assert "dL/d(output) is the sum of 3 contributions" in details
    for c in norm1.children:
        op = trace.ops[c - 1]
        k = next(k for k, i in enumerate(op.inputs) if i.node == trace.ops[norm1.step - 1].node)
        assert f"step {c} Linear {op.module}</td><td>norm {op.inputs[k].grad_norm:.3g}" in details, op.module


def test_chromium_folds_blocks_and_highlights_a_chain(tiny, tmp_path):
    model, trace, records = tiny
    name = "trf_blocks.0.att.W_query.weight"
    chain, n = explain.chain(trace, name)
    steps = [op.step for op, _ in chain]
    path = render_html.write_html(records, tmp_path / "tiny.html", highlight=(name, steps, n))
    dom = render(path)
    assert errors_in(dom) == ""
    assert f"{name}, 15 ops (of {n:,} chains through the graph)" in dom and n == 16
    assert sorted(map(int, op_nodes(dom))) == list(range(1, len(trace.ops) + 1))
    chained = re.findall(r'<g class="op chain" data-step="(\d+)"', dom)
    assert sorted(map(int, chained)) == sorted(steps) and len(steps) == 15
    assert f'<g class="param chain" data-param="{name}"' in dom
    assert len(re.findall(r'<path [^>]*class="edge chain"', dom)) == len(steps) + 1   # loss -> ... -> parameter

    dom = render(render_html.write_html(records, tmp_path / "folded.html", folded=True))
    assert errors_in(dom) == ""
    assert re.findall(r'data-block="([^"]+)"', dom) == ["trf_blocks.1", "trf_blocks.0"]
    assert sorted(map(int, op_nodes(dom))) == list(range(1, len(trace.ops) + 1))   # hidden, still there
    for name, _ in model.named_parameters():
        assert f'data-param-row="{name}"' in dom, name


def test_a_script_error_reaches_the_errors_element(micro, tmp_path, monkeypatch):
    """The check above can fail: a page whose script throws shows it in #errors."""
    _, _, records = micro
    monkeypatch.setattr(render_html, "_SCRIPT", render_html._SCRIPT.replace(
        'document.body.setAttribute("data-ready", "1");', "null.boom;"))
    dom = render(render_html.write_html(records, tmp_path / "broken.html"))
    assert "TypeError" in errors_in(dom) and 'data-ready="1"' not in dom


def test_chromium_renders_the_cli_page_with_values_and_the_chain(tmp_path):
    """explain_backward.py --model micro --param NAME --html FILE: the page Chromium draws has
    every op and parameter, the chain in orange, and an op's values in its details."""
    import io
    name = "trf_blocks.0.att.W_query.weight"
    page = tmp_path / "cli.html"
    assert explain.main(["--model", "micro", "--param", name, "--html", str(page)], file=io.StringIO()) == 0
    dom = render(page, "#step=2")
    assert errors_in(dom) == ""
    assert sorted(map(int, op_nodes(dom))) == list(range(1, 27))
    assert f'<g class="param chain" data-param="{name}"' in dom
    chained = sorted(map(int, re.findall(r'<g class="op[^"]*\bchain\b[^"]*" data-step="(\d+)"', dom)))   # step 2 also selected
    assert chained == [1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 15, 16]
    details = re.search(r'<div id="details">(.*?)</div>\s*<h2>Parameters', dom, re.S).group(1)
    assert "step 2: Linear" in details and details.count('<pre class="values">') == 3   # dL/d(out), dx, dW


def _attrs(tag):
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def _bezier_points(d, n=48):
    nums = list(map(float, re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)))
    (x1, y1, c1x, c1y, c2x, c2y, x2, y2) = nums
    t = np.linspace(0, 1, n + 1)[:, None]
    u = 1 - t
    pts = u ** 3 * [x1, y1] + 3 * u * u * t * [c1x, c1y] + 3 * u * t * t * [c2x, c2y] + t ** 3 * [x2, y2]
    return pts


@pytest.mark.parametrize("which", ["micro", "tiny"])
def test_chromium_frames_hold_only_their_blocks_nodes_and_no_arrow_crosses_a_title(which, micro, tiny, tmp_path):
    """A block's frame is drawn around its own ops and parameters only: the final norm's
    parameters, the embeddings' Add and the next block's parameters sit outside it, and the
    frame's title sits where no arrow passes."""
    model, trace, records = micro if which == "micro" else tiny
    dom = render(render_html.write_html(records, tmp_path / f"{which}.html", folded=False))
    assert errors_in(dom) == ""
    reader = {name: r.block for r in records for name in r.params}
    frames = {}
    for tag in re.findall(r"<rect [^>]*data-frame=[^>]*>", dom):
        a = _attrs(tag)
        frames[a["data-frame"]] = tuple(float(a[k]) for k in ("x", "y", "width", "height"))
    assert sorted(frames) == sorted({r.block for r in records if r.block})
    nodes = 0
    for opening, rect in re.findall(r'(<g class="(?:op|param|leaf|loss)[^"]*"[^>]*>)\s*(<rect [^>]*>)', dom):
        g, a = _attrs(opening), _attrs(rect)
        if "data-step" in g:
            block = records[int(g["data-step"]) - 1].block
        elif "data-param" in g:
            block = reader[g["data-param"]]
        else:
            block = None                                                   # the loss, the token ids
        x, y, w, h = (float(a[k]) for k in ("x", "y", "width", "height"))
        for name, (fx, fy, fw, fh) in frames.items():
            inside = fx <= x and x + w <= fx + fw and fy <= y and y + h <= fy + fh
            overlaps = x < fx + fw and fx < x + w and y < fy + fh and fy < y + h
            if name == block:
                assert inside, (opening, name)
            else:
                assert not overlaps, f"{opening} is drawn inside {name}'s frame"
        nodes += 1
    assert nodes == len(trace.ops) + len(reader) + 1 + 2                  # ops, parameters, the loss, 2 id leaves
    for tag in re.findall(r"<text [^>]*data-title=[^>]*>", dom):
        bx, by, bw, bh = map(float, _attrs(tag)["data-bbox"].split(","))
        assert bw > 100
        for d in re.findall(r'<path d="(M[^"]+)"[^>]*class="edge', dom):
            pts = _bezier_points(d)
            hit = (pts[:, 0] > bx) & (pts[:, 0] < bx + bw) & (pts[:, 1] > by) & (pts[:, 1] < by + bh)
            assert not hit.any(), f"an arrow {d} crosses the title of {_attrs(tag)['data-title']}"


def test_chromium_side_panel_names_q_k_v_and_the_residual_and_shows_the_worked_row(tmp_path):
    """--html with --worked Attention: step 13's panel calls its inputs q, k, v (not input 0, 1, 2)
    and shows the worked numbers, dq's row 0 explained; an Add's panel says which input is the
    residual stream."""
    import io
    page = tmp_path / "worked.html"
    assert explain.main(["--model", "micro", "--html", str(page), "--worked", "Attention"], file=io.StringIO()) == 0
    dom = render(page, "#step=13")
    assert errors_in(dom) == ""
    details = re.search(r'<div id="details">(.*?)</div>\s*<h2>Parameters', dom, re.S).group(1)
    for name in "qkv":
        assert f"<b>{name}</b>: 1x2x8x4" in details
    assert "<b>input 0</b>" not in details
    worked = re.search(r'<pre class="worked">(.*?)</pre>', details, re.S).group(1)
    assert "worked numbers: batch 0, head 0 of step 13 Attention" in worked and "why dq's row 0 is zero" in worked
    dom = render(page, "#step=9")
    details = re.search(r'<div id="details">(.*?)</div>\s*<h2>Parameters', dom, re.S).group(1)
    assert "<b>a</b>: 1x8x8, the output of step 24 (the residual stream: the block's input (the embeddings' Add))" in details
    assert "(the attention branch's output (Linear trf_blocks.0.att.out_proj))" in details
    assert '<pre class="worked">' not in details                       # only the op worked
