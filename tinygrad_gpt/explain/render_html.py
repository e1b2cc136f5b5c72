"""The backward graph as one self-contained HTML page: no network, no Graphviz.

    records = records_from_trace(trace)              # or build OpRecord / InputRecord yourself
    write_html(records, "backward.html", title="backward through GPT-2 micro", loss=trace.loss)

The page draws one box per op, numbered by the step at which backward ran it (the listing's
numbers), the loss at the top and the parameters as yellow leaves; an arrow is a gradient on
its way down, coloured by its norm (a log scale, in the legend). Each transformer block is a
frame that folds into one box (click its title; big graphs start folded). A click on a box
shows what the op received (dL/d(its output)), what it returned for each input, their shapes
and norms, the values when the records carry them, and the file:line of its backward code.
`highlight=(name, steps)` or `(name, steps, number of chains)` draws one parameter's chain
(explain.chain) in orange. An op whose output was read by several ops (norm1's, read by
W_query, W_key and W_value) lists the contributions that were added into its gradient.
Frozen parameters (requires_grad False: explain --lora, --finetune classifier; `frozen`, from
frozen_from_trace) are drawn grey (class `frozen`), joined by a dashed arrow to the op that read
them when that op ran backward, else in a grey box per part below the graph (no op reading them
ran backward); their panel says frozen, and why no gradient was computed.

The records are plain data, so this module needs nothing from the tracer: `records_from_trace`
reads any object with explain.Trace's fields.
"""
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import fileio

FOLD_ABOVE_OPS = 150          # a graph with more ops starts with its blocks folded
MAX_VALUES = 512              # arrays with more numbers are shown by their norm only


# ----------------------------------------------------------------------------- the records
@dataclass
class InputRecord:
    shape: tuple                  # the input's shape
    source: str                   # "op:7" (made by step 7), "param:<name>", "ids", "targets" or "const"
    grad_norm: float = None       # norm of the gradient it receives, summed to its shape (None: no gradient)
    grad_shape: tuple = None      # what the op's backward returned, before a broadcast was summed
    grad_values: list = None      # that gradient as nested lists, when small (optional)
    name: str = None              # the name forward gives it: x, w, b; q, k, v; a, b (optional)
    carries: str = None           # what it carries, where the name does not say (an Add's residual stream)
    frozen: bool = False          # a parameter with requires_grad False: the op was not asked for its gradient
    computed: bool = None         # whether the op's backward returned a gradient for it anyway


@dataclass
class OpRecord:
    step: int                     # 1: the first op backward runs (the loss)
    op: str                       # the Function: Linear, LayerNorm, ...
    module: str                   # the module that made it ("trf_blocks.0.att.W_query"), "" or None
    block: str                    # the transformer block it ran in ("trf_blocks.0"), or None
    code: str                     # file:line of its backward
    out_shape: tuple
    out_grad_norm: float          # norm of dL/d(its output), the gradient it was handed
    inputs: list = field(default_factory=list)     # [InputRecord], in the op's argument order
    params: list = field(default_factory=list)     # names of the parameters it hands a gradient to
    parents: list = field(default_factory=list)    # steps of the ops that made its inputs (it sends them gradient)
    children: list = field(default_factory=list)   # steps of the ops that read its output (they sent it gradient)
    out_grad_values: list = None  # dL/d(its output) as nested lists, when small (optional)
    worked: list = None           # lines: row 0 worked by hand (explain --worked), shown in its panel


def small_values(array, limit=MAX_VALUES):
    """An array as nested lists of 4-significant-digit floats, or None when it has more than
    `limit` numbers (the page then shows its norm alone)."""
    if array is None:
        return None
    a = np.asarray(array, dtype=np.float64)
    if a.size > limit:
        return None
    return np.vectorize(lambda v: float(f"{v:.4g}"), otypes=[float])(a).tolist() if a.size else a.tolist()


def records_from_trace(trace, values=None):
    """[OpRecord] from an explain.Trace (anything with its fields: trace.ops of Op with step, name,
    module, block, node, out_shape, out_grad_norm, backward_at, inputs of Input with shape,
    dtype, node, param, grad_shape, grad_norm). The arrays come from the trace when it kept
    them (trace_backward(keep_values=...): Op.out_grad, Input.grad), or from `values`:
    {step: (dL/d(output), [gradient each input receives, or None])}."""
    from .render_text import carries
    made_by = {op.node: op.step for op in trace.ops}
    readers = {}
    for op in trace.ops:
        for i in op.inputs:
            if i.node in made_by and i.grad_shape is not None:
                readers.setdefault(made_by[i.node], []).append(op.step)
    records = []
    for op in trace.ops:
        kept = (getattr(op, "out_grad", None), [getattr(i, "grad", None) for i in op.inputs])
        out_grad, input_grads = (values or {}).get(op.step, kept)
        inputs = []
        for k, i in enumerate(op.inputs):
            if i.node in made_by:
                source = f"op:{made_by[i.node]}"
            elif i.param is not None:
                source = f"param:{i.param}"
            elif "int" in str(i.dtype):
                source = "targets" if op.name == "CrossEntropy" else "ids"
            else:
                source = "const"                     # e.g. a dropout mask
            g = input_grads[k] if k < len(input_grads) else None
            inputs.append(InputRecord(tuple(i.shape), source, i.grad_norm,
                                      None if i.grad_shape is None else tuple(i.grad_shape),
                                      small_values(g), getattr(i, "arg", None),
                                      carries(op, i) if hasattr(i, "made_by") else None,
                                      frozen=i.param is not None and getattr(i, "needed", None) is False,
                                      computed=getattr(i, "computed", None)))
        records.append(OpRecord(
            step=op.step, op=op.name, module=op.module, block=op.block, code=op.backward_at,
            out_shape=tuple(op.out_shape), out_grad_norm=op.out_grad_norm, inputs=inputs,
            params=[i.param for i in op.inputs if i.param is not None and i.grad_shape is not None],
            parents=sorted({made_by[i.node] for i in op.inputs if i.node in made_by and i.grad_shape is not None}),
            children=sorted(set(readers.get(op.step, []))), out_grad_values=small_values(out_grad)))
    return records


def frozen_from_trace(trace):
    """The frozen parameters of an explain.Trace (trace.frozen) as the page draws them: name,
    shape, the part it belongs to (its first name: tok_emb, trf_blocks.0, out_head), whether
    an op that ran backward read it (drawn beside that op) and why no gradient was computed."""
    from .render_text import frozen_why
    out = []
    for f in getattr(trace, "frozen", []):
        parts = f.name.split(".")
        part = ".".join(parts[:2]) if parts[0] == "trf_blocks" else parts[0]
        out.append({"name": f.name, "shape": list(f.shape), "part": part,
                    "steps": [r.step for r in f.reads if r.step is not None],
                    "computed": bool(f.computed()), "why": frozen_why(f)})
    return out


# ----------------------------------------------------------------------------- the page
def _finite(x):
    return None if x is None or not math.isfinite(x) else x


def page_data(records, title="backward", loss=None, highlight=None, folded=None, frozen=None):
    """The JSON the page's script draws from (also what tests inspect)."""
    ops = []
    for r in records:
        d = asdict(r) if not isinstance(r, dict) else dict(r)
        d["out_grad_norm"] = _finite(d["out_grad_norm"])
        for i in d["inputs"]:
            i["grad_norm"] = _finite(i["grad_norm"])
        ops.append(d)
    steps = [o["step"] for o in ops]
    if steps != list(range(1, len(ops) + 1)):
        raise ValueError(f"records must be steps 1..{len(ops)} in order, got {steps[:5]}...")
    chain = None
    if highlight is not None:
        name, chain_steps, *n_chains = highlight
        chain = {"param": name, "steps": [int(s) for s in chain_steps],
                 "count": int(n_chains[0]) if n_chains else None}
    return {"title": title, "loss": _finite(loss), "ops": ops, "chain": chain,
            "folded": len(ops) > FOLD_ABOVE_OPS if folded is None else bool(folded),
            "frozen": list(frozen or [])}


def render_html(records, title="backward", loss=None, highlight=None, folded=None, frozen=None):
    """The page as a string: one file, its style and script inline."""
    data = json.dumps(page_data(records, title, loss, highlight, folded, frozen), separators=(",", ":"))
    data = data.replace("</", "<\\/")            # never end the <script> early
    return (_PAGE.replace("__TITLE__", html.escape(title))
                 .replace("__STYLE__", _STYLE)
                 .replace("__DATA__", data)
                 .replace("__SCRIPT__", _SCRIPT))


def write_html(records, path, title="backward", loss=None, highlight=None, folded=None, frozen=None):
    """Write the page to `path` (its directory is made); returns the Path. frozen: the frozen
    parameters (frozen_from_trace), drawn grey."""
    path = Path(path)
    fileio.mkdir(path.parent, parents=True, exist_ok=True)
    fileio.atomic_write(path, render_html(records, title, loss, highlight, folded, frozen).encode("utf-8"))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>__TITLE__</title>
<script>
// first of all: any error of the page's script lands in #errors (tests read it from the DOM)
window.__errors = [];
function __report(msg) {
  window.__errors.push(msg);
  var box = document.getElementById("errors");
  if (box) { box.textContent = window.__errors.join("\\n"); box.style.display = "block"; }
}
window.onerror = function (msg, src, line, col) { __report("error: " + msg + " at line " + line + ":" + col); };
(function () { var e = console.error; console.error = function () {
  __report("console.error: " + Array.prototype.join.call(arguments, " ")); e.apply(console, arguments); }; })();
</script>
<style>__STYLE__</style>
</head><body>
<header>
  <h1 id="title">__TITLE__</h1>
  <div id="summary"></div>
  <div id="controls"><button id="fold-all">fold all blocks</button> <button id="unfold-all">unfold all</button>
  <button id="clear-chain" hidden>hide the chain</button></div>
  <div id="legend"></div>
  <pre id="errors"></pre>
</header>
<main>
  <div id="graph"><svg id="svg" xmlns="http://www.w3.org/2000/svg"></svg></div>
  <aside id="side">
    <div id="details"><p class="hint">Click an op to see what its backward received and returned.</p></div>
    <h2>Parameters</h2>
    <table id="params"></table>
  </aside>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_STYLE = """
body { font: 13px/1.35 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #222; }
header { padding: 8px 14px; border-bottom: 1px solid #ddd; background: #fafafa; }
h1 { font-size: 17px; margin: 0 0 4px 0; }
h2 { font-size: 14px; margin: 14px 0 4px 0; }
#summary { color: #555; margin-bottom: 6px; }
#legend { margin-top: 6px; font-size: 12px; color: #444; }
#legend span.swatch { display: inline-block; width: 18px; height: 10px; margin: 0 1px; vertical-align: middle; }
#errors { display: none; color: #b00; background: #fee; padding: 4px; }
main { display: flex; align-items: flex-start; }
#graph { flex: 1 1 auto; overflow: auto; padding: 10px; }
#side { flex: 0 0 450px; max-width: 450px; padding: 10px 14px; border-left: 1px solid #ddd;
        position: sticky; top: 0; max-height: 100vh; overflow: auto; box-sizing: border-box; }
svg text { font-size: 11px; pointer-events: none; }
g.op rect { fill: #e8f0fe; stroke: #5a7bbf; rx: 5; }
g.loss rect { fill: #fde2e2; stroke: #b55; rx: 14; }
g.op:hover rect, g.param:hover rect, g.blockbox:hover rect { stroke-width: 2.5; cursor: pointer; }
g.op.selected rect, g.param.selected rect { stroke: #000; stroke-width: 2.5; }
g.param rect { fill: #fff8d6; stroke: #c9a400; rx: 12; }
g.param.frozen rect { fill: #e6e6e6; stroke: #9a9a9a; stroke-dasharray: 3 2; }
g.param.frozen text { fill: #777; }
path.edge.frozen { stroke-dasharray: 4 3; }
#params tr.frozen td { color: #888; }
g.leaf rect { fill: #eee; stroke: #999; rx: 3; }
g.blockbox rect { fill: #d7ecff; stroke: #3a6ea5; stroke-width: 1.5; rx: 6; }
rect.cluster { fill: #f7f9fc; stroke: #99a; stroke-dasharray: 4 3; rx: 8; }
text.cluster-title { font-size: 12px; font-weight: bold; fill: #335; pointer-events: all; cursor: pointer; }
text.step { font-weight: bold; }
path.edge { fill: none; stroke-width: 2; opacity: 0.9; }
body.has-chain g.op:not(.chain), body.has-chain g.param:not(.chain), body.has-chain g.blockbox:not(.chain),
body.has-chain path.edge:not(.chain) { opacity: 0.25; }
g.chain rect { stroke: #e66a00 !important; stroke-width: 3 !important; }
path.edge.chain { stroke: #e66a00 !important; stroke-width: 4; opacity: 1; }
table { border-collapse: collapse; font-size: 12px; }
td, th { padding: 1px 6px 1px 0; text-align: left; vertical-align: top; }
#params tr { cursor: pointer; }
#params tr:hover { background: #eef; }
pre.worked { font-size: 10.5px; background: #f6f3e8; padding: 4px; white-space: pre-wrap; }
pre.values { font-size: 10.5px; background: #f4f4f4; padding: 4px; overflow-x: auto; margin: 2px 0 6px 0; }
.code { font-family: ui-monospace, Menlo, Consolas, monospace; }
.hint { color: #777; }
"""

_SCRIPT = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("data").textContent);
var ops = D.ops, byStep = {};
ops.forEach(function (o) { byStep[o.step] = o; });
var folded = {};                               // block name -> true when drawn as one box
var blocks = [];
ops.forEach(function (o) { if (o.block && blocks.indexOf(o.block) < 0) blocks.push(o.block); });
blocks.forEach(function (b) { folded[b] = D.folded; });
var chainSteps = D.chain ? D.chain.steps : [];
var frozen = {};                               // name -> the frozen parameter's record
(D.frozen || []).forEach(function (f) { frozen[f.name] = f; });
var W = 200, H = 34, PW = 230, GAP_X = 26, GAP_Y = 28, MARGIN = 20, TITLE_BAND = 22;
var SVGNS = "http://www.w3.org/2000/svg";

function dims(s) { return typeof s === "string" ? s : s.length ? s.join("x") : "scalar"; }
function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toPrecision(3); }
function esc(t) { return String(t).replace(/[&<>"]/g, function (c) {
  return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; }); }

// the colour of a gradient: log10 of its norm between the smallest and largest in the graph
var norms = [];
ops.forEach(function (o) { o.inputs.forEach(function (i) { if (i.grad_norm > 0) norms.push(i.grad_norm); }); });
var lo = Math.log10(Math.min.apply(null, norms.length ? norms : [1]));
var hi = Math.log10(Math.max.apply(null, norms.length ? norms : [1]));
var PALETTE = ["#3b4cc0", "#5977e3", "#7b9ff9", "#9ebeff", "#c0d4f5", "#dddcdc", "#f2cbb7", "#f7ac8e", "#ee8468", "#d65244", "#b40426"];
function colour(n) {
  if (!(n > 0)) return "#bbb";
  var t = hi > lo ? (Math.log10(n) - lo) / (hi - lo) : 0.5;
  return PALETTE[Math.max(0, Math.min(PALETTE.length - 1, Math.round(t * (PALETTE.length - 1))))];
}

// ---- the visible graph: ops (or their folded block), parameters, token ids; the loss on top
function paramBlock(name) {
  for (var k = 0; k < ops.length; k++) if (ops[k].params.indexOf(name) >= 0) return ops[k].block;
  if (frozen[name] && frozen[name].steps.length) return byStep[frozen[name].steps[0]].block;   // read, not fed
  return null;
}
function where(step) { var o = byStep[step]; return o.block && folded[o.block] ? "b:" + o.block : "op:" + step; }

function buildGraph() {
  var nodes = {}, order = [], edges = {}, edgeList = [];
  function node(id, kind, extra) {
    if (!nodes[id]) { nodes[id] = Object.assign({id: id, kind: kind}, extra || {}); order.push(id); }
    return nodes[id];
  }
  function edge(from, to, norm, shape, chain, isFrozen) {   // from: the op sending the gradient; to: its input
    if (from === to) return;
    var key = from + "|" + to, e = edges[key];
    if (!e) { e = edges[key] = {from: from, to: to, norm: norm, shape: shape, chain: false, frozen: !!isFrozen}; edgeList.push(e); }
    else if (norm > e.norm) { e.norm = norm; e.shape = shape; }
    e.chain = e.chain || chain;
  }
  node("loss", "loss");
  ops.forEach(function (o) {
    var id = where(o.step);
    if (id.charAt(0) === "b") node(id, "block", {block: o.block});
    else node(id, "op", {step: o.step});
  });
  var inChain = {};
  chainSteps.forEach(function (s) { inChain[s] = true; });
  edge("loss", where(1), null, "scalar", chainSteps.length > 0);
  ops.forEach(function (o) {
    var from = where(o.step);
    o.inputs.forEach(function (inp, k) {
      var to = null, chain = false;
      if (inp.source.indexOf("op:") === 0) {
        var s = +inp.source.slice(3);
        to = where(s);
        chain = inChain[o.step] && inChain[s] && chainSteps.indexOf(s) === chainSteps.indexOf(o.step) + 1;
      } else if (inp.source.indexOf("param:") === 0) {
        var name = inp.source.slice(6), b = paramBlock(name);
        to = b && folded[b] ? "b:" + b : "param:" + name;
        if (to.charAt(0) === "p") node(to, "param", {name: name, shape: inp.shape, norm: inp.grad_norm, step: o.step,
                                                     frozen: !!frozen[name]});
        chain = D.chain && D.chain.param === name && chainSteps[chainSteps.length - 1] === o.step;
        if (frozen[name]) { edge(from, to, null, inp.shape, false, true); return; }
      } else if (inp.source === "ids") {
        to = "ids:" + o.step + ":" + k;
        node(to, "leaf", {label: "token ids " + dims(inp.shape), step: o.step});
      } else { return; }                       // targets, dropout masks: not drawn
      edge(from, to, inp.grad_norm, inp.shape, chain);   // to the token ids: grey, no gradient
    });
  });
  // frozen parameters no op that ran backward read: one grey box per part, below the graph
  (D.frozen || []).forEach(function (f) {
    if (f.steps.length) return;
    var n = node("frozen:" + f.part, "frozenpart", {part: f.part, names: []});
    n.names.push(f.name);
  });
  return {nodes: nodes, order: order, edges: edgeList};
}

// ---- layout: longest path from the loss gives each node its row; rows ordered by the
// average position of the nodes above them (a few sweeps of the barycentre rule)
function layout(g) {
  var indeg = {}, down = {}, up = {};
  g.order.forEach(function (id) { indeg[id] = 0; down[id] = []; up[id] = []; });
  g.edges.forEach(function (e) { indeg[e.to]++; down[e.from].push(e.to); up[e.to].push(e.from); });
  var row = {}, queue = g.order.filter(function (id) { return indeg[id] === 0; });
  queue.forEach(function (id) { row[id] = 0; });
  while (queue.length) {
    var id = queue.shift();
    down[id].forEach(function (t) {
      row[t] = Math.max(row[t] || 0, row[id] + 1);
      if (--indeg[t] === 0) queue.push(t);
    });
  }
  g.order.forEach(function (id) { if (row[id] === undefined) throw new Error("cycle at " + id); });
  var bottom = 0;                              // the frozen parts out of the graph: a row below it
  g.order.forEach(function (id) { if (g.nodes[id].kind !== "frozenpart") bottom = Math.max(bottom, row[id]); });
  g.order.forEach(function (id) { if (g.nodes[id].kind === "frozenpart") row[id] = bottom + 1; });
  // a block's frame holds its own nodes only: a row inside a block's span of rows that also holds
  // other nodes (the final norm's parameters, the next block's norm1 parameters, an embedding's
  // Add) has those moved to a row of their own, above the block when their gradient comes from
  // above it, else below it; the rows then renumber in order
  var key = {}, group = {};
  g.order.forEach(function (id) { key[id] = row[id]; group[id] = groupOf(g.nodes[id]); });
  for (var pass = 0; pass < 4; pass++) {
    var moved = false;
    blocks.forEach(function (b) {
      var mine = g.order.filter(function (id) { return group[id] === b; });
      if (!mine.length) return;
      var lo = Math.min.apply(null, mine.map(function (id) { return key[id]; }));
      var hi = Math.max.apply(null, mine.map(function (id) { return key[id]; }));
      g.order.forEach(function (id) {
        if (group[id] === b || key[id] < lo || key[id] > hi) return;
        var before = lo - 0.5 + key[id] * 1e-4, after = hi + 0.5 + key[id] * 1e-4;
        if (up[id].every(function (p) { return key[p] < before; })) { key[id] = before; moved = true; }
        else if (down[id].every(function (c) { return key[c] > after; })) { key[id] = after; moved = true; }
      });
    });
    if (!moved) break;
  }
  var keys = g.order.map(function (id) { return key[id]; }).filter(function (k, i, a) { return a.indexOf(k) === i; });
  keys.sort(function (a, b) { return a - b; });
  var rows = [];
  g.order.forEach(function (id) { row[id] = keys.indexOf(key[id]); (rows[row[id]] = rows[row[id]] || []).push(id); });
  var x = {};
  function width(id) { var k = g.nodes[id].kind; return k === "param" || k === "frozenpart" ? PW : W; }
  function place(r) {
    var pos = MARGIN;
    r.forEach(function (id) { x[id] = pos + width(id) / 2; pos += width(id) + GAP_X; });
  }
  rows.forEach(place);
  for (var sweep = 0; sweep < 4; sweep++) {
    for (var k = 1; k < rows.length; k++) {
      var r = rows[k] || [];
      var bary = {};
      r.forEach(function (id, j) {
        var ps = up[id].filter(function (p) { return x[p] !== undefined; });
        bary[id] = ps.length ? ps.reduce(function (s, p) { return s + x[p]; }, 0) / ps.length :
                   g.nodes[id].kind === "frozenpart" ? j : j * 1000;   // the frozen parts: packed left
      });
      r.sort(function (a, b) { return bary[a] - bary[b]; });
      var pos = MARGIN;                        // keep order, move right of the barycentre when room
      r.forEach(function (id) {
        var want = Math.max(pos + width(id) / 2, bary[id]);
        x[id] = want; pos = want + width(id) / 2 + GAP_X;
      });
    }
  }
  var y = {}, top = MARGIN + 24, previous = null;
  rows.forEach(function (r) {                  // a block's first row gets a band above it for the frame's title
    var b = group[r[0]];
    if (b && b !== previous) top += TITLE_BAND;
    r.forEach(function (id) { y[id] = top; });
    top += H + GAP_Y; previous = b;
  });
  return {x: x, y: y, rows: rows.length, width: width, height: top + MARGIN, group: group};
}

// the unfolded block a node is drawn inside (null: none)
function groupOf(n) {
  var b = null;
  if (n.kind === "op") b = byStep[n.step].block;
  else if (n.kind === "param") b = paramBlock(n.name);
  return b && !folded[b] ? b : null;
}

// ---- drawing
function el(tag, attrs, parent) {
  var e = document.createElementNS(SVGNS, tag);
  for (var a in attrs) e.setAttribute(a, attrs[a]);
  if (parent) parent.appendChild(e);
  return e;
}
function text(parent, x, y, content, cls) {
  var t = el("text", {x: x, y: y, "text-anchor": "middle"}, parent);
  if (cls) t.setAttribute("class", cls);
  t.textContent = content;
  return t;
}
function clip(s, n) { return s.length > n ? "\u2026" + s.slice(s.length - n + 1) : s; }

function draw() {
  var svg = document.getElementById("svg");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  var defs = el("defs", {}, svg);
  var g = buildGraph(), L = layout(g);
  var maxX = 0;
  g.order.forEach(function (id) { maxX = Math.max(maxX, L.x[id] + L.width(id) / 2); });
  var height = L.height;
  svg.setAttribute("width", maxX + MARGIN + 60);
  svg.setAttribute("height", height);
  PALETTE.concat(["#bbb", "#e66a00"]).forEach(function (c) {
    var m = el("marker", {id: "arrow" + c.slice(1), viewBox: "0 0 10 10", refX: 9, refY: 5,
                          markerWidth: 6, markerHeight: 6, orient: "auto"}, defs);
    el("path", {d: "M0,0 L10,5 L0,10 z", fill: c}, m);
  });
  // clusters: an unfolded block's frame, behind its nodes (drawn after the edges, whose
  // crossings place its title, into a layer below them)
  var clusterLayer = el("g", {}, svg), edgeLayer = el("g", {}, svg), nodeLayer = el("g", {}, svg);
  var curves = [];                             // each edge as points, to keep the titles clear of them
  g.edges.forEach(function (e) {
    var x1 = L.x[e.from], y1 = L.y[e.from] + H, x2 = L.x[e.to], y2 = L.y[e.to];
    var c = e.chain ? "#e66a00" : colour(e.norm);
    var p = el("path", {d: "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 + GAP_Y * 0.8) + " " + x2 + "," + (y2 - GAP_Y * 0.8) + " " + x2 + "," + (y2 - 1),
                        "class": "edge" + (e.chain ? " chain" : "") + (e.frozen ? " frozen" : ""), stroke: c,
                        "marker-end": "url(#arrow" + c.slice(1) + ")"}, edgeLayer);
    var tt = el("title", {}, p);
    tt.textContent = e.frozen ? "frozen parameter: no gradient computed (needs_input_grad False)" :
                     e.norm === null ? "no gradient (integer input)" : "gradient " + dims(e.shape) + ", norm " + fmt(e.norm);
    var pts = [];
    for (var k = 0; k <= 48; k++) {
      var t = k / 48, u = 1 - t;
      pts.push([u * u * u * x1 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t * t * t * x2,
                u * u * u * y1 + 3 * u * u * t * (y1 + GAP_Y * 0.8) + 3 * u * t * t * (y2 - GAP_Y * 0.8) + t * t * t * (y2 - 1)]);
    }
    curves.push(pts);
  });
  blocks.forEach(function (b) {
    if (folded[b]) return;
    var ids = g.order.filter(function (id) { return L.group[id] === b; });
    if (!ids.length) return;
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    ids.forEach(function (id) {
      x0 = Math.min(x0, L.x[id] - L.width(id) / 2); x1 = Math.max(x1, L.x[id] + L.width(id) / 2);
      y0 = Math.min(y0, L.y[id]); y1 = Math.max(y1, L.y[id] + H);
    });
    el("rect", {x: x0 - 10, y: y0 - 10 - TITLE_BAND, width: x1 - x0 + 20, height: y1 - y0 + 20 + TITLE_BAND,
                "class": "cluster", "data-frame": b}, clusterLayer);
    var n = ops.filter(function (o) { return o.block === b; }).length;
    var t = el("text", {x: x0 - 4, y: y0 - 14, "class": "cluster-title", "data-title": b}, clusterLayer);
    t.textContent = "\u25be " + b + " (TransformerBlock, " + n + " ops): click to fold";
    t.addEventListener("click", function () { folded[b] = true; draw(); });
    // slide the title along the frame's top to where no arrow passes
    var tw = t.getComputedTextLength ? t.getComputedTextLength() : 8 * t.textContent.length;
    var ty0 = y0 - 14 - 13, ty1 = y0 - 14 + 4, taken = [];
    curves.forEach(function (pts) {
      pts.forEach(function (q) { if (q[1] >= ty0 - 2 && q[1] <= ty1 + 2) taken.push(q[0]); });
    });
    var best = null;
    for (var tx = x0 - 4; tx + tw <= x1 + 6 && best === null; tx += 4) {
      if (taken.every(function (qx) { return qx < tx - 4 || qx > tx + tw + 4; })) best = tx;
    }
    if (best !== null) t.setAttribute("x", best);
    t.setAttribute("data-bbox", [best === null ? x0 - 4 : best, ty0, tw, ty1 - ty0].join(","));
  });
  g.order.forEach(function (id) {
    var n = g.nodes[id], w = L.width(id), x = L.x[id] - w / 2, y = L.y[id];
    var grp = el("g", {}, nodeLayer);
    el("rect", {x: x, y: y, width: w, height: H}, grp);
    var cx = L.x[id];
    if (n.kind === "op") {
      var o = byStep[n.step];
      grp.setAttribute("class", "op" + (chainSteps.indexOf(o.step) >= 0 ? " chain" : ""));
      grp.setAttribute("data-step", o.step);
      text(grp, cx, y + 14, "#" + o.step + "  " + o.op, "step");
      text(grp, cx, y + 27, clip(o.module === null ? "-" : (o.module || "(model)"), 34));
      grp.addEventListener("click", function () { select(grp); showOp(o); });
    } else if (n.kind === "param") {
      grp.setAttribute("class", "param" + (n.frozen ? " frozen" : "") + (D.chain && D.chain.param === n.name ? " chain" : ""));
      grp.setAttribute("data-param", n.name);
      text(grp, cx, y + 14, clip(n.name, 38));
      text(grp, cx, y + 27, dims(n.shape) + (n.frozen ? "  frozen" : "  grad " + fmt(n.norm)));
      grp.addEventListener("click", function () { select(grp); showParam(n.name); });
    } else if (n.kind === "frozenpart") {
      grp.setAttribute("class", "param frozen");
      grp.setAttribute("data-frozen-part", n.part);
      grp.setAttribute("data-params", n.names.join(" "));
      text(grp, cx, y + 14, clip(n.part + ": " + n.names.length + " frozen", 38));
      text(grp, cx, y + 27, "no op reading them ran backward");
      grp.addEventListener("click", function () { select(grp); showFrozen(n.names[0], n.names); });
    } else if (n.kind === "block") {
      var bops = ops.filter(function (o) { return o.block === n.block; });
      var np = bops.reduce(function (s, o) { return s + o.params.length; }, 0);
      grp.setAttribute("class", "blockbox" + (bops.some(function (o) { return chainSteps.indexOf(o.step) >= 0; }) ? " chain" : ""));
      grp.setAttribute("data-block", n.block);
      text(grp, cx, y + 14, "\u25b8 " + n.block + "  #" + bops[0].step + "-" + bops[bops.length - 1].step, "step");
      text(grp, cx, y + 27, bops.length + " ops, " + np + " parameters: click to unfold");
      grp.addEventListener("click", function () { folded[n.block] = false; draw(); });
    } else if (n.kind === "loss") {
      grp.setAttribute("class", "loss");
      text(grp, cx, y + 14, "loss", "step");
      text(grp, cx, y + 27, D.loss === null ? "" : Number(D.loss).toFixed(4));
    } else {
      grp.setAttribute("class", "leaf");
      text(grp, cx, y + 21, n.label);
    }
  });
  // ops inside folded blocks are still in the page, hidden, so that every op has its node
  var hidden = el("g", {"class": "folded-ops", style: "display:none"}, nodeLayer);
  ops.forEach(function (o) {
    if (o.block && folded[o.block]) {
      var grp = el("g", {"class": "op", "data-step": o.step}, hidden);
      text(grp, 0, 0, "#" + o.step + " " + o.op);
    }
  });
}

function select(grp) {
  Array.prototype.forEach.call(document.querySelectorAll(".selected"), function (e) { e.classList.remove("selected"); });
  grp.classList.add("selected");
}

function valuesBlock(v) {
  // as NumPy prints: one common power of ten in front, then 2 decimals a number
  if (v === null || v === undefined) return "";
  var flat = [].concat.apply([], [v]).toString().split(",").map(Number), big = 0;
  flat.forEach(function (x) { big = Math.max(big, Math.abs(x)); });
  var p = big > 0 ? Math.floor(Math.log10(big)) : 0, scale = Math.pow(10, p);
  function num(x) { var t = (x / scale).toFixed(2); return (t.charAt(0) === "-" ? "" : " ") + t; }
  function rows(a, depth) {
    if (!Array.isArray(a)) return num(a);
    if (a.length && !Array.isArray(a[0])) return "[" + a.map(num).join(" ") + "]";
    return "[" + a.map(function (r) { return rows(r, depth + 1); }).join("\n" + " ".repeat(depth + 1)) + "]";
  }
  return '<pre class="values">' + (p ? "1e" + p + " x\n" : "") + esc(rows(v, 0)) + "</pre>";
}

function showOp(o) {
  var h = "<h2>step " + o.step + ": " + esc(o.op) + "</h2><table>";
  h += "<tr><th>module</th><td>" + esc(o.module === null ? "-" : (o.module || "(model)")) + "</td></tr>";
  if (o.block) h += "<tr><th>block</th><td>" + esc(o.block) + "</td></tr>";
  h += '<tr><th>backward code</th><td class="code">' + esc(o.code) + "</td></tr>";
  h += "<tr><th>output</th><td>" + dims(o.out_shape) + "</td></tr>";
  h += "<tr><th>received</th><td>dL/d(output), norm " + fmt(o.out_grad_norm) +
       (o.children.length ? ", from step " + o.children.join(", ") : " (the loss itself)") + "</td></tr>";
  h += "</table>";
  if (o.children.length > 1) {                  // its output was read more than once: the gradients added up
    h += "<p>dL/d(output) is the sum of " + o.children.length + " contributions, one from each op that read it:</p><table>";
    o.children.forEach(function (c) {
      byStep[c].inputs.forEach(function (i) {
        if (i.source === "op:" + o.step) h += "<tr><td>step " + c + " " + esc(byStep[c].op) + " " + esc(byStep[c].module || "") +
                                             "</td><td>norm " + fmt(i.grad_norm) + "</td></tr>";
      });
    });
    h += "</table>";
  }
  h += valuesBlock(o.out_grad_values);
  h += "<h2>returned, one gradient per input</h2>";
  o.inputs.forEach(function (i, k) {
    var src = i.source.indexOf("op:") === 0 ? "the output of step " + i.source.slice(3) :
              i.source.indexOf("param:") === 0 ? "parameter " + i.source.slice(6) : i.source;
    h += "<div><b>" + esc(i.name || "input " + k) + "</b>: " + dims(i.shape) + ", " + esc(src) +
         (i.carries ? " (" + esc(i.carries) + ")" : "") + "<br>";
    if (i.frozen) h += i.computed ? "frozen, but its backward computed a gradient for it anyway (dropped)"
                                  : "frozen: no gradient computed (needs_input_grad False)";
    else if (i.grad_norm === null) h += "no gradient";
    else {
      h += "gradient norm " + fmt(i.grad_norm);
      if (i.grad_shape && dims(i.grad_shape) !== dims(i.shape)) h += " (returned " + dims(i.grad_shape) + ", summed to " + dims(i.shape) + ")";
    }
    h += "</div>" + valuesBlock(i.grad_values);
  });
  if (o.params.length) h += "<p>parameters reached here: " + o.params.map(esc).join(", ") + "</p>";
  if (o.worked) h += '<h2>worked numbers (explain --worked)</h2><pre class="worked">' + esc(o.worked.join("\n")) + "</pre>";
  document.getElementById("details").innerHTML = h;
}

function showFrozen(name, names) {
  var f = frozen[name];
  var h = "<h2>" + esc(names && names.length > 1 ? f.part + ": " + names.length + " frozen parameters" : name) + "</h2>";
  (names || [name]).forEach(function (n) {
    var r = frozen[n];
    h += '<p class="frozen"><b class="code">' + esc(n) + "</b> " + dims(r.shape) + ": frozen (requires_grad False): " +
         (r.computed ? "a gradient was computed anyway" : "no gradient computed") + ". " + esc(r.why) + "</p>";
  });
  document.getElementById("details").innerHTML = h;
}

function showParam(name) {
  if (frozen[name]) {
    var f = frozen[name], sel = null;
    if (f.steps.length) {
      var b = paramBlock(name);
      if (b && folded[b]) { folded[b] = false; draw(); }
      sel = document.querySelector('g.param[data-param="' + name + '"]');
    }
    if (sel) { select(sel); sel.scrollIntoView({block: "center", inline: "center"}); }
    showFrozen(name);
    return;
  }
  var o = ops.filter(function (o) { return o.params.indexOf(name) >= 0; })[0];
  if (o.block && folded[o.block]) { folded[o.block] = false; draw(); }
  var grp = document.querySelector('g.param[data-param="' + name + '"]');
  if (grp) { select(grp); grp.scrollIntoView({block: "center", inline: "center"}); }
  showOp(o);
}

function paramTable() {
  var t = document.getElementById("params"), h = "<tr><th>name</th><th>shape</th><th>grad norm</th><th>step</th></tr>";
  ops.forEach(function (o) {
    o.inputs.forEach(function (i) {
      if (i.source.indexOf("param:") === 0 && i.grad_norm !== null) {
        var name = i.source.slice(6);
        h += '<tr data-param-row="' + esc(name) + '"><td class="code">' + esc(name) + "</td><td>" + dims(i.shape) +
             "</td><td>" + fmt(i.grad_norm) + "</td><td>" + o.step + "</td></tr>";
      }
    });
  });
  (D.frozen || []).forEach(function (f) {
    h += '<tr class="frozen" data-param-row="' + esc(f.name) + '"><td class="code">' + esc(f.name) + "</td><td>" +
         dims(f.shape) + "</td><td>frozen</td><td>" + (f.steps.length ? f.steps.join(", ") : "-") + "</td></tr>";
  });
  t.innerHTML = h;
  Array.prototype.forEach.call(t.querySelectorAll("tr[data-param-row]"), function (tr) {
    tr.addEventListener("click", function () { showParam(tr.getAttribute("data-param-row")); });
  });
}

function legend() {
  var h = "gradient norm: " + fmt(Math.pow(10, lo)) + " ";
  PALETTE.forEach(function (c) { h += '<span class="swatch" style="background:' + c + '"></span>'; });
  h += " " + fmt(Math.pow(10, hi)) + " (log scale); arrows point the way the gradient flows, from the loss down";
  document.getElementById("legend").innerHTML = h;
}

function frozenSummary() {
  var wasted = D.frozen.filter(function (f) { return f.computed; }).length;
  return wasted ? "no gradient computed for " + (D.frozen.length - wasted) + " of them, one computed anyway (and dropped) for " + wasted
                : "no gradient computed for them";
}
var nparams = ops.reduce(function (s, o) { return s + o.params.length; }, 0);
document.getElementById("summary").textContent = ops.length + " ops in the order backward ran them (#1 first), " +
  nparams + " parameter tensors reached" +
  (D.frozen && D.frozen.length ? ", " + D.frozen.length + " frozen (grey): " + frozenSummary() : "") +
  (D.loss === null ? "" : ", loss " + Number(D.loss).toFixed(4)) +
  (D.chain ? "; in orange: the shortest chain from the loss to " + D.chain.param + ", " + chainSteps.length + " ops" +
             (D.chain.count ? " (of " + Number(D.chain.count).toLocaleString("en-US") + " chains through the graph)" : "") : "");
document.getElementById("fold-all").addEventListener("click", function () { blocks.forEach(function (b) { folded[b] = true; }); draw(); });
document.getElementById("unfold-all").addEventListener("click", function () { blocks.forEach(function (b) { folded[b] = false; }); draw(); });
if (D.chain) {
  document.body.classList.add("has-chain");
  var clear = document.getElementById("clear-chain");
  clear.hidden = false;
  clear.addEventListener("click", function () { document.body.classList.toggle("has-chain"); });
}
legend();
paramTable();
draw();
var m = /step=(\d+)/.exec(location.hash);     // page.html#step=13 opens op 13's details
if (m && byStep[+m[1]]) {
  var o = byStep[+m[1]];
  if (o.block && folded[o.block]) { folded[o.block] = false; draw(); }
  var grp = document.querySelector('g.op[data-step="' + o.step + '"]');
  if (grp) select(grp);
  showOp(o);
}
document.body.setAttribute("data-ready", "1");
})();
"""
