"""explain.py: the backward trace reaches every parameter once, --param's chain, the DOT graph.

Everything runs on the tiny model (a few seconds in all). The DOT output is parsed by a small
parser for the subset explain.py writes; pydot and Graphviz's `dot` are used when installed.
"""
import io
import re
import subprocess

import numpy as np
import pytest

from helpers import require

from tinygrad_gpt import Function, GPTModel, get_config, manual_seed
from tinygrad_gpt import explain


def tiny_model(T=16, drop_rate=0.0, seed=0):
    cfg = get_config("tiny")
    cfg.update(context_length=T, drop_rate=drop_rate)
    manual_seed(seed)
    return GPTModel(cfg)


def batch(T=16, B=1, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50257, size=(B, T + 1))
    return ids[:, :-1], ids[:, 1:]


@pytest.fixture(scope="module")
def traced():
    model = tiny_model(drop_rate=0.1).train()
    x, y = batch()
    seen = []
    trace = explain.trace_backward(model, x, y, on_op=seen.append)
    return model, trace, seen


def run_cli(*argv):
    out = io.StringIO()
    code = explain.main(list(argv), file=out)
    return code, out.getvalue()


# ----------------------------------------------------------------------------- the trace
def test_every_parameter_is_reached_exactly_once_as_a_leaf(traced):
    model, trace, _ = traced
    names = [name for name, _ in model.named_parameters()]
    assert dict(trace.received) == {name: 1 for name in names}
    handed = [name for op in trace.ops for name in op.params()]
    assert sorted(handed) == sorted(names)            # each by exactly one op of the sweep
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert sum(p.size for name, p in model.named_parameters() if trace.received[name]) == model.num_parameters()


def test_on_op_sees_every_op_in_the_order_backward_runs_them(traced):
    _, trace, seen = traced
    assert seen == trace.ops
    assert [op.step for op in trace.ops] == list(range(1, len(trace.ops) + 1))
    assert trace.ops[0].name == "CrossEntropy" and trace.ops[0].module == "loss"
    assert {op.name for op in trace.ops[-2:]} == {"Embedding"}


def test_ops_are_named_by_the_module_that_made_them(traced):
    _, trace, _ = traced
    by_module = {(op.name, op.module): op for op in trace.ops}
    assert ("Linear", "trf_blocks.0.att.W_query") in by_module
    assert ("LayerNorm", "final_norm") in by_module
    assert ("Attention", "trf_blocks.1.att") in by_module
    assert by_module["Linear", "trf_blocks.0.att.W_query"].block == "trf_blocks.0"
    assert by_module["LayerNorm", "final_norm"].block is None
    assert by_module["Linear", "out_head"].params() == ["out_head.weight"]


def test_backward_code_locations_point_at_a_backward_def(traced):
    _, trace, _ = traced
    for op in trace.ops:
        path, line = op.backward_at.rsplit(":", 1)
        source = (explain.ROOT / path).read_text(encoding="utf-8").splitlines()
        assert source[int(line) - 1].strip().startswith("def backward("), op.backward_at


def test_grad_norms_in_the_trace_match_the_parameters_gradients(traced):
    model, trace, _ = traced
    params = dict(model.named_parameters())
    worst = 0.0
    for op in trace.ops:
        for i in op.inputs:
            if i.param is not None:
                want = float(np.linalg.norm(params[i.param].grad.astype(np.float64)))
                worst = max(worst, abs(i.grad_norm - want) / max(want, 1e-12))
    print(f"worst relative error of a traced gradient norm: {worst:.2e}")
    assert worst < 1e-4


def test_tracing_changes_no_gradient_and_is_undone_afterwards():
    x, y = batch()
    plain = tiny_model()
    from tinygrad_gpt import functional as F
    F.cross_entropy(plain(x), y).backward()
    traced_model = tiny_model()
    apply_before = Function.__dict__["apply"]
    explain.trace_backward(traced_model, x, y)
    assert Function.__dict__["apply"] is apply_before
    assert all("forward" not in vars(m) for m in traced_model.modules())
    from tinygrad_gpt.tensor import _backward_hooks, _forward_hooks
    assert _backward_hooks == [] and _forward_hooks == []
    worst = max(float(np.abs(p.grad - q.grad).max())
                for p, q in zip(plain.parameters(), traced_model.parameters()))
    print(f"worst difference from a plain backward: {worst:.1e}")
    assert worst == 0.0


def test_parameter_groups_add_up_to_the_model_size(traced):
    model, _, _ = traced
    groups = explain.parameter_groups(model)
    assert sum(p.size for _, members in groups for _, p in members) == model.num_parameters()
    labels = [g for g, _ in groups]
    assert labels[:3] == ["token embedding", "positional embedding", "trf_blocks.0 attention Q/K/V"]
    assert labels[-2:] == ["final layer norm", "output head"]
    assert explain._shapes_text([(64, 64)] * 3) == "3 x 64 x 64"
    assert explain._shapes_text([(256, 64), (256,)]) == "256 x 64 + 256"


# ----------------------------------------------------------------------------- one parameter's chain
@pytest.mark.parametrize("name, chains", [("trf_blocks.0.att.W_query.weight", 16), ("tok_emb.weight", 64),
                                          ("out_head.weight", 1)])
def test_chain_runs_from_the_loss_to_the_parameter_through_linked_ops(traced, name, chains):
    _, trace, _ = traced
    ops, n = explain.chain(trace, name)
    assert n == chains                        # 2 blocks: 4 ways through each attention add, 2 through each ff add
    assert ops[0][0].name == "CrossEntropy"
    last, k = ops[-1]
    assert last.inputs[k].param == name
    for (upper, k_upper), (lower, _) in zip(ops, ops[1:]):
        assert upper.inputs[k_upper].node == lower.node      # each op made what the one above read
        assert upper.step < lower.step


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def listing():
    code, out = run_cli("--context-length", "16")
    assert code == 0
    return out


def test_cli_lists_every_op_and_every_parameter_once(listing):
    op_lines = re.findall(r"^\s+(\d+)  (\w+)\s", listing, flags=re.M)
    visited = int(re.search(r"^ops visited: (\d+)", listing, flags=re.M).group(1))
    assert [int(s) for s, _ in op_lines] == list(range(1, visited + 1))
    received = re.findall(r"-> (\S+) \(\S+\) receives its gradient", listing)
    model = tiny_model()
    assert sorted(received) == sorted(name for name, _ in model.named_parameters())


def test_cli_totals_equal_the_model_parameter_count(listing):
    model = tiny_model()
    total = model.num_parameters()
    m = re.search(r"parameters reached: (\d+) of (\d+) tensors, ([\d,]+) of ([\d,]+) numbers, each tensor once",
                  listing)
    assert m, listing[-2000:]
    assert int(m.group(1)) == int(m.group(2)) == len(model.parameters())
    assert int(m.group(3).replace(",", "")) == int(m.group(4).replace(",", "")) == total
    rows = re.findall(r"^  (.+?)\s{2,}(?:[\dx +]+?)\s+([\d,]+)\s+[\d.]+%\s+\S+$", listing, flags=re.M)
    parts = {label.strip(): int(n.replace(",", "")) for label, n in rows}
    assert parts.pop("total = model.num_parameters()") == total
    assert parts["token embedding"] == 50257 * 64
    assert sum(parts.values()) == total


def test_cli_depth_limits_the_listing_to_the_ops_nearest_the_loss():
    from tinygrad_gpt.kernels import get_backend
    backend = get_backend()
    code, out = run_cli("--context-length", "8", "--depth", "3")
    assert code == 0
    assert get_backend() == backend                            # --kernels is put back afterwards
    steps = [int(s) for s in re.findall(r"^\s+(\d+)  \w+\s", out, flags=re.M)]
    assert steps == [1, 2, 3]
    assert re.search(r"\.\.\. \d+ more ops not listed \(--depth 3\)", out)
    assert "each tensor once" in out                           # the totals still count them all


def test_cli_param_prints_a_chain_ending_at_that_parameter():
    name = "trf_blocks.1.ff.layers.0.weight"
    code, out = run_cli("--context-length", "8", "--param", name)
    assert code == 0
    lines = out.rstrip().splitlines()
    why = next(k for k, line in enumerate(lines) if line.startswith("why "))   # the chain count, explained
    lines = lines[:why]
    assert lines[-1].strip().startswith(f"-> {name} (")
    chain = [line for line in lines if re.match(r"^\s+\d+  \w+", line)]
    assert chain[0].split()[1] == "CrossEntropy"
    assert chain[-1].split()[1:3] == ["Linear", "trf_blocks.1.ff.layers.0"]
    steps = [int(line.split()[0]) for line in chain]
    assert steps == sorted(steps)


def test_cli_unknown_param_is_a_usage_error_with_suggestions(capsys):
    code, _ = run_cli("--context-length", "8", "--param", "trf_blocks.0.att.Wquery.weight")
    assert code == explain.USAGE_ERROR
    assert "did you mean trf_blocks.0.att.W_query.weight" in capsys.readouterr().err


# ----------------------------------------------------------------------------- DOT
_TOKEN = re.compile(r'\s*(?:(->)|([{}\[\];,=])|"((?:[^"\\]|\\.)*)"|([A-Za-z_][\w.]*|-?\d+(?:\.\d+)?))')


def _tokens(text):
    pos, out = 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return out
        m = _TOKEN.match(text, pos)
        assert m and m.end() > pos, f"DOT: cannot read {text[pos:pos + 40]!r}"
        arrow, punct, quoted, bare = m.groups()
        out.append(("id", quoted.replace('\\"', '"')) if quoted is not None else
                   ("id", bare) if bare is not None else ("p", arrow or punct))
        pos = m.end()


def parse_dot(text):
    """The subset explain.to_dot writes: digraph, graph/node/edge defaults, node and edge
    statements with [k=v, ...], subgraph clusters. Returns (nodes, edges, clusters)."""
    toks = _tokens(text)
    i = 0

    def take(kind=None, value=None):
        nonlocal i
        assert i < len(toks), "DOT: unexpected end"
        k, v = toks[i]
        assert (kind is None or k == kind) and (value is None or v == value), f"DOT: expected {value or kind}, got {v!r}"
        i += 1
        return v

    def attrs():
        out = {}
        if i < len(toks) and toks[i] == ("p", "["):
            take("p", "[")
            while toks[i] != ("p", "]"):
                key = take("id")
                take("p", "=")
                out[key] = take("id")
                if toks[i] == ("p", ","):
                    take("p", ",")
            take("p", "]")
        return out

    nodes, edges, clusters = {}, [], {}

    def statements(cluster):
        while toks[i] != ("p", "}"):
            first = take("id")
            if first == "subgraph":
                name = take("id")
                take("p", "{")
                clusters[name] = []
                statements(name)
                take("p", "}")
                continue
            if first in ("graph", "node", "edge"):
                attrs()
            elif toks[i] == ("p", "->"):
                take("p", "->")
                edges.append((first, take("id"), attrs()))
            else:
                assert first not in nodes, f"DOT: node {first!r} declared twice"
                nodes[first] = attrs()
                if cluster is not None:
                    clusters[cluster].append(first)
            take("p", ";")

    assert take("id") == "digraph"
    take("id")
    take("p", "{")
    statements(None)
    take("p", "}")
    assert i == len(toks), "DOT: text after the closing brace"
    for a, b, _ in edges:
        assert a in nodes and b in nodes, f"DOT: edge {a} -> {b} names an undeclared node"
    return nodes, edges, clusters


def test_dot_expanded_has_every_op_and_parameter_in_its_block_cluster(traced):
    model, trace, _ = traced
    nodes, edges, clusters = parse_dot(explain.to_dot(trace, model, expand=True))
    assert sum(1 for n in nodes if n.startswith("op")) == len(trace.ops)
    assert {n[len("param:"):] for n in nodes if n.startswith("param:")} == {n for n, _ in model.named_parameters()}
    assert set(clusters) == {"cluster_trf_blocks.0", "cluster_trf_blocks.1"}
    assert "param:trf_blocks.1.att.W_key.weight" in clusters["cluster_trf_blocks.1"]
    assert ("op1", "loss") in {(a, b) for a, b, _ in edges}
    assert nodes["param:tok_emb.weight"]["label"].startswith("tok_emb.weight\\n50257x64")


def test_dot_collapsed_draws_each_block_as_one_node(traced):
    model, trace, _ = traced
    nodes, edges, clusters = parse_dot(explain.to_dot(trace, model, expand=False))
    assert clusters == {}
    assert [n for n in nodes if n.startswith("block:")] == ["block:trf_blocks.1", "block:trf_blocks.0"]
    inside = [op for op in trace.ops if op.block is not None]
    assert not any(f"op{op.step}" in nodes for op in inside)
    assert not any(n.startswith("param:trf_blocks.") for n in nodes)
    pairs = {(a, b) for a, b, _ in edges}
    assert ("block:trf_blocks.0", "block:trf_blocks.1") in pairs
    assert all(a != b for a, b in pairs)


def test_dot_large_graphs_collapse_by_default(traced, monkeypatch):
    model, trace, _ = traced
    assert "subgraph" in explain.to_dot(trace, model)           # the tiny model: expanded
    monkeypatch.setattr(explain.render_dot, "EXPAND_AT_MOST_OPS", 10)
    assert "subgraph" not in explain.to_dot(trace, model)


def test_dot_labels_escape_quotes_and_backslashes():
    assert explain._q('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


def test_dot_parses_with_pydot_when_installed(traced):
    pydot = require("pydot")
    model, trace, _ = traced
    (graph,) = pydot.graph_from_dot_data(explain.to_dot(trace, model))
    assert graph.get_name() == "backward"


def test_cli_dot_writes_the_graph_and_graphviz_renders_it(tmp_path):
    require("dot", program=True)                               # Graphviz
    path = tmp_path / "graph.dot"
    code, out = run_cli("--context-length", "8", "--depth", "0", "--no-expand", "--dot", str(path))
    assert code == 0
    assert f"picture written to {path.with_suffix('.png')}" in out
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checked = subprocess.run(["dot", "-Tcanon", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stderr, checked.stderr


def test_cli_dot_without_graphviz_still_writes_the_dot_file(tmp_path, monkeypatch):
    monkeypatch.setattr(explain.shutil, "which", lambda name: None)
    path = tmp_path / "sub" / "graph.dot"
    code, out = run_cli("--context-length", "8", "--depth", "0", "--dot", str(path))
    assert code == 0
    assert "no PNG" in out and not path.with_suffix(".png").exists()
    parse_dot(path.read_text(encoding="utf-8"))


def test_model_summary_writes_the_weights_shapes_as_the_explain_table_does():
    """(out, in), as nn.Linear stores a weight and the totals table prints it: the head is V x C."""
    from tinygrad_gpt.explain.render_text import _shapes_text
    cfg = get_config("micro")
    manual_seed(0)
    model = GPTModel(cfg)
    rows = {line[:32].strip(): line[32:55].strip() for line in model.summary().splitlines()[1:]}
    blk = model.trf_blocks[0]
    for row, module in [("feed-forward expansion", blk.ff.layers[0]), ("feed-forward contraction", blk.ff.layers[2]),
                        ("attention output projection", blk.att.out_proj), ("output head (untied)", model.out_head),
                        ("token embedding", model.tok_emb)]:
        assert rows[row] == _shapes_text([tuple(p.shape) for p in module.parameters()]), (row, rows[row])
    assert rows["output head (untied)"] == "17 x 8" and rows["feed-forward expansion"] == "32 x 8 + 32"
