"""Rendering a trace as a Graphviz DOT graph (and a PNG where `dot` is installed)."""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

from .. import fileio
from .render_text import _dims, _module_label
from .trace import _norm

EXPAND_AT_MOST_OPS = 150                         # --dot draws blocks expanded up to this many ops


# ----------------------------------------------------------------------------- Graphviz
def _q(text):
    """A DOT quoted string; '\\n' in labels is DOT's line break."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw):
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in kw.items()) + "]"


def to_dot(trace, model, expand=None, title=None):
    """The computation graph in Graphviz DOT, drawn bottom-up as the book draws GPT-2: token ids
    at the bottom, the loss at the top; an edge is a tensor (its shape, and the norm of the
    gradient that went back along it). Each transformer block is a cluster, or one node when
    collapsed (the default above EXPAND_AT_MOST_OPS ops; expand=True/False forces it)."""
    if expand is None:
        expand = len(trace.ops) <= EXPAND_AT_MOST_OPS
    made_by = {op.node: op.step for op in trace.ops}
    param_block = {}
    for op in trace.ops:
        for i in op.inputs:
            if i.param is not None:
                param_block.setdefault(i.param, op.block)
    params = dict(model.named_parameters())

    def where(node_id, block):                       # the drawn node, after collapsing
        return f"block:{block}" if block is not None and not expand else node_id

    nodes = {}                                       # drawn id -> (block or None, attrs)
    edges = {}                                       # (from, to) -> attrs, the first one kept
    for op in trace.ops:
        label = f"{op.name}\n{_module_label(op)}\n{op.backward_at}\ndL/d(out) {op.out_grad_norm:.3g}"
        nodes.setdefault(where(f"op{op.step}", op.block), (op.block, _attrs(shape="box", label=label)))
        for k, i in enumerate(op.inputs):
            if i.node in made_by:
                src = where(f"op{made_by[i.node]}", trace.ops[made_by[i.node] - 1].block)
            elif i.param is not None:
                src = where(f"param:{i.param}", param_block[i.param])
                frozen = i.grad_norm is None         # requires_grad False: grey, no gradient
                nodes.setdefault(src, (param_block[i.param], _attrs(
                    shape="ellipse", style="filled", fillcolor="gray90" if frozen else "lightyellow",
                    label=f"{i.param}\n{_dims(i.shape)}\n" + ("frozen" if frozen else f"grad {i.grad_norm:.3g}"))))
            elif "int" in i.dtype:                   # token ids, targets: inputs with no gradient
                src = f"input{op.step}_{k}"
                what = "targets" if op.name == "CrossEntropy" else "ids"
                nodes[src] = (None, _attrs(shape="plaintext", label=f"{what} {_dims(i.shape)}"))
            else:                                    # a dropout mask: no gradient, not drawn
                continue
            dst = where(f"op{op.step}", op.block)
            if src == dst:
                continue
            norm = i.grad_norm
            if (src.startswith("block:") or dst.startswith("block:")) and i.node in made_by:
                norm = trace.ops[made_by[i.node] - 1].out_grad_norm   # edges merged: the whole gradient
            grad = "" if norm is None else f"\ngrad {norm:.3g}"
            edges.setdefault((src, dst), _attrs(label=f"{_dims(i.shape)}{grad}"))
    nodes["loss"] = (None, _attrs(shape="doublecircle", label=f"loss\n{trace.loss:.4f}"))
    edges[(where("op1", trace.ops[0].block), "loss")] = _attrs(label="scalar")

    blocks = {}
    for op in trace.ops:
        if op.block is not None:
            blocks.setdefault(op.block, []).append(op)
    for block, ops in blocks.items():
        if not expand:
            names = [n for n, b in param_block.items() if b == block]
            norm = math.sqrt(sum(_norm(params[n].grad) ** 2 for n in names if params[n].grad is not None))
            size = sum(params[n].size for n in names)
            n_frozen = sum(1 for n in names if not params[n].requires_grad)
            nodes[f"block:{block}"] = (None, _attrs(
                shape="box3d", style="filled", fillcolor="lightblue",
                label=f"{block} (TransformerBlock)\n{len(ops)} ops, {len(names)} parameter tensors"
                      + (f" ({n_frozen} frozen)" if n_frozen else "") + f"\n{size:,} parameters, grad norm {norm:.3g}"))

    out = ["digraph backward {",
           "  " + "graph " + _attrs(rankdir="BT", fontname="Helvetica", labelloc="t",
                                     label=title or f"backward: loss {trace.loss:.4f}, {len(trace.ops)} ops") + ";",
           "  node " + _attrs(fontname="Helvetica", fontsize="10") + ";",
           "  edge " + _attrs(fontname="Helvetica", fontsize="8") + ";"]
    for block in blocks if expand else ():
        out.append(f"  subgraph {_q('cluster_' + block)} {{")
        out.append("    graph " + _attrs(label=f"{block} (TransformerBlock)", style="rounded", color="gray") + ";")
        out += [f"    {_q(n)} {a};" for n, (b, a) in nodes.items() if b == block]
        out.append("  }")
    out += [f"  {_q(n)} {a};" for n, (b, a) in nodes.items() if b is None or not expand]
    out += [f"  {_q(s)} -> {_q(d)} {a};" for (s, d), a in edges.items()]
    out.append("}")
    return "\n".join(out) + "\n"


def write_dot(text, path, file=None):
    """Write the DOT file, and a PNG next to it when Graphviz's `dot` is installed."""
    path = Path(path)
    fileio.mkdir(path.parent, parents=True, exist_ok=True)
    fileio.atomic_write(path, text.encode("utf-8"))
    print(f"graph written to {path}", file=file)
    dot = shutil.which("dot")
    if dot is None:
        print("  (no PNG: Graphviz's `dot` is not installed; render later with dot -Tpng "
              f"{path} -o {path.with_suffix('.png')})", file=file)
        return None
    png = path.with_suffix(".png")
    done = subprocess.run([dot, "-Tpng", str(path), "-o", str(png)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        print(f"  dot failed on {path}: {done.stderr.strip()[:300]}", file=file)
        return None
    print(f"picture written to {png}", file=file)
    return png
