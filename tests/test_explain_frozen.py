"""explain --lora RANK / --finetune classifier: the listing names each trainable parameter as
receiving its gradient and each frozen one as frozen, with the trace's evidence that no
gradient was computed for it (the op never ran backward, or ran with needs_input_grad False
and returned None); the HTML page draws the frozen leaves grey.

The evidence is checked against a second backward hook beside the tracer's (what each op's
backward really returned), and the check can fail: a Linear made to compute dW regardless is
reported as computing a gradient for its frozen weight.
"""
import argparse
import io
import re

import numpy as np
import pytest

from tinygrad_gpt import GPTModel, explain, get_config, manual_seed
from tinygrad_gpt import functional as F
from tinygrad_gpt.char_tokenizer import MICRO_SENTENCE, micro_tokenizer
from tinygrad_gpt.explain import render_html
from tinygrad_gpt.explain.cli import finetuned
from tinygrad_gpt.tensor import register_backward_hook


def run(argv):
    out = io.StringIO()
    assert explain.main(argv, file=out) == 0
    return out.getvalue()


def sections(text):
    """{name: line} of the 'trainable (N tensors):' and 'frozen (N tensors):' lists."""
    found, current = {"trainable": {}, "frozen": {}}, None
    for line in text.splitlines():
        m = re.match(r"(trainable|frozen) \((\d+) tensors\):$", line)
        if m:
            current = m.group(1)
            continue
        if current and line.startswith("  ") and not line.startswith("  part "):
            name = line.split()[0]
            found[current][name] = line
        elif current:
            current = None
        if line.startswith("  part "):
            current = None
    return found


def model_for(name, finetune=None, lora=None, seed=123, T=None):
    cfg = get_config(name)
    if T is not None:
        cfg["context_length"] = T
    cfg["drop_rate"] = 0.0
    manual_seed(seed)
    return finetuned(GPTModel(cfg).train(), argparse.Namespace(finetune=finetune, lora=lora))


def micro_batch():
    ids = np.array(micro_tokenizer().encode(MICRO_SENTENCE))
    return ids[None, :8], ids[None, 1:9]


def what_backward_returned(model, x, y, **kw):
    """The trace, and for each frozen parameter whether any op's backward returned an array for
    it, seen by a hook of our own (not the tracer's records)."""
    frozen = {id(p): n for n, p in model.named_parameters() if not p.requires_grad}
    returned = {n: False for n in frozen.values()}
    ran = set()

    def hook(node, ctx, grad, input_grads):
        grads = tuple(input_grads) + (None,) * (len(ctx.parents) - len(input_grads))
        for parent, g in zip(ctx.parents, grads):
            if id(parent) in frozen:
                ran.add(frozen[id(parent)])
                returned[frozen[id(parent)]] |= g is not None

    with register_backward_hook(hook):
        trace = explain.trace_backward(model, x, y, **kw)
    return trace, returned, ran


# ----------------------------------------------------------------------------- LoRA
def test_lora_micro_listing_names_exactly_the_adapters_as_trainable_and_every_base_weight_frozen():
    text = run(["--model", "micro", "--lora", "2"])
    model = model_for("micro", lora=2)
    names = [n for n, _ in model.named_parameters()]
    adapters = [n for n in names if n.endswith((".lora.A", ".lora.B"))]
    base = [n for n in names if n not in adapters]
    listed = sections(text)
    assert sorted(listed["trainable"]) == sorted(adapters) and len(adapters) == 2 * 7   # 6 Linears + the head
    assert sorted(listed["frozen"]) == sorted(base) and len(base) == 18
    for name, line in listed["trainable"].items():
        assert "receives its gradient, norm" in line, line
    for name, line in listed["frozen"].items():
        assert " frozen: " in line, line
    # the Linears' weights and biases and the embeddings: no gradient computed, and why
    for name in base:
        if "linear" in name or name.endswith("_emb.weight"):
            assert "frozen: no gradient computed:" in listed["frozen"][name], listed["frozen"][name]
    assert "Embedding tok_emb never ran backward (none of its inputs needed a gradient)" in listed["frozen"]["tok_emb.weight"]
    assert re.search(r"Linear out_head\.linear ran backward at step \d+ with needs_input_grad False for it",
                     listed["frozen"]["out_head.linear.weight"])
    assert "parameters reached: 14 of 14 trainable tensors, 338 of 338 trainable numbers, each tensor once" in text
    assert "parameters frozen: 18 of 32 tensors, 1,200 of 1,538 numbers (78.02%)" in text
    assert "appendix E's LoRA: a rank-2 adapter (alpha 2) beside every Linear, every other parameter frozen" in text
    # under the op that read it, each frozen weight is named where backward passed it by
    assert "-> out_head.linear.weight (17x8) frozen: no gradient computed (needs_input_grad False)" in text
    # B starts at zero: every A's gradient is exactly 0 on this first step, every B's is not
    for name, line in listed["trainable"].items():
        norm = float(re.search(r"norm (\S+) ", line).group(1))
        assert (norm == 0) == name.endswith(".A"), line


def test_the_listings_no_gradient_computed_agrees_with_what_each_backward_returned():
    """For every frozen parameter, 'no gradient computed' is printed exactly when no op's
    backward returned an array for it (a hook of our own watching); the ones that never
    reached backward are exactly those no recorded op read."""
    model = model_for("micro", lora=2)
    x, y = micro_batch()
    trace, returned, ran = what_backward_returned(model, x, y)
    listed = sections("\n".join(explain.totals(trace, model)))
    assert sorted(listed["frozen"]) == sorted(returned)
    for name, was in returned.items():
        line = listed["frozen"][name]
        assert ("frozen: a gradient was computed:" in line) == was, line
        assert ("frozen: no gradient computed:" in line) == (not was), line
        assert ("never ran backward" in line) == (name not in ran), line
    # the engine's promise for the layers the issue names (test_frozen.py measures their work)
    linears = [n for n in returned if ".linear." in n or n.endswith("_emb.weight")]
    assert linears and not any(returned[n] for n in linears)
    print("\nfrozen tensors whose op computed a gradient anyway:", [n for n, w in returned.items() if w] or "none")


def test_unfreezing_one_tensor_moves_it_to_the_trainable_list():
    model = model_for("micro", lora=2)
    x, y = micro_batch()
    before = sections("\n".join(explain.totals(explain.trace_backward(model, x, y), model)))
    name = "trf_blocks.0.att.W_query.linear.weight"
    dict(model.named_parameters())[name].requires_grad = True
    text = "\n".join(explain.totals(explain.trace_backward(model, x, y), model))
    after = sections(text)
    assert name in before["frozen"] and name not in before["trainable"]
    assert name in after["trainable"] and name not in after["frozen"]
    m = re.search(r"receives its gradient, norm (\S+) \(step \d+ Linear trf_blocks\.0\.att\.W_query\.linear\)",
                  after["trainable"][name])
    assert m and float(m.group(1)) > 0, after["trainable"][name]
    assert set(after["frozen"]) == set(before["frozen"]) - {name}
    assert "parameters reached: 15 of 15 trainable tensors" in text


def test_a_linear_that_computes_dW_for_a_frozen_weight_is_reported(monkeypatch):
    """The check can fail: with Linear's backward told every input needs a gradient, it computes
    dW for the frozen weights (the engine then drops it); the listing says so."""
    plain = F.Linear.backward

    def wasteful(ctx, grad):
        ctx.needs_input_grad = (True,) * len(ctx.parents)
        return plain(ctx, grad)

    monkeypatch.setattr(F.Linear, "backward", wasteful)
    model = model_for("micro", lora=2)
    x, y = micro_batch()
    trace, returned, _ = what_backward_returned(model, x, y)
    text = "\n".join(explain.totals(trace, model))
    line = sections(text)["frozen"]["out_head.linear.weight"]
    assert returned["out_head.linear.weight"]
    assert re.search(r"frozen: a gradient was computed: Linear out_head\.linear at step \d+ computed its gradient "
                     r"anyway \(dropped\)", line), line
    assert re.search(r"a gradient was computed anyway for \d+ of them", text)


# ----------------------------------------------------------------------------- chapter 6's classifier
def test_classifier_listing_trains_exactly_the_last_block_the_final_norm_and_the_head():
    text = run(["--finetune", "classifier", "--context-length", "16"])
    model = model_for("tiny", finetune="classifier", T=16)
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n in names if n.startswith(("trf_blocks.1.", "final_norm.", "out_head."))]
    listed = sections(text)
    assert sorted(listed["trainable"]) == sorted(trainable) and len(trainable) == 17
    assert sorted(listed["frozen"]) == sorted(set(names) - set(trainable))
    assert all("frozen: no gradient computed:" in line and "never ran backward" in line
               for line in listed["frozen"].values())                  # nothing below the last block ran
    assert "no gradient computed for any of them" in text
    assert "a uniform guess over 2 classes would give ln 2 = 0.6931); the classifier reads the last token's logits" in text
    assert re.search(r"\n    1  CrossEntropy  loss .* 1x2 \(", text)    # (B, 2): the last token's logits
    assert "out_head.weight (2x64) receives its gradient" in text
    steps = re.findall(r"^\s+\d+  (\w+)\s+(\S+)", text, re.M)
    assert ("Embedding", "tok_emb") not in steps and not any(m.startswith("trf_blocks.0") for _, m in steps)
    assert re.search(r"token embedding .* 3,216,448 +0 +\d+\.\d+% +frozen", text)


def test_lora_classifier_is_appendix_e_the_adapters_alone_train():
    text = run(["--model", "micro", "--finetune", "classifier", "--lora", "2"])
    listed = sections(text)
    assert listed["trainable"] and all(n.endswith((".lora.A", ".lora.B")) for n in listed["trainable"])
    assert {"out_head.linear.weight", "out_head.linear.bias", "trf_blocks.0.norm1.scale"} <= set(listed["frozen"])
    assert "appendix E's LoRA classifier" in text


# ----------------------------------------------------------------------------- the command's errors
@pytest.mark.parametrize("argv, message", [
    (["--lora", "0"], "--lora RANK must be at least 1, got 0"),
    (["--model", "micro", "--lora", "2", "--param", "tok_emb.weight"], "--param tok_emb.weight is frozen"),
    (["--book", "--lora", "2"], "leave out --finetune and --lora"),
    (["--model", "micro", "--finetune", "classifier", "--break", "none"], "--break takes"),
])
def test_bad_combinations_are_one_line_errors(argv, message, capsys):
    assert explain.main(argv, file=io.StringIO()) == explain.USAGE_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_param_chain_to_an_adapter():
    text = run(["--model", "micro", "--lora", "2", "--param", "trf_blocks.0.att.W_query.lora.B"])
    assert "the gradient of trf_blocks.0.att.W_query.lora.B (2x8, 16 numbers), from the loss down" in text


# ----------------------------------------------------------------------------- the HTML page
def test_page_data_carries_every_frozen_parameter_and_the_inputs_flag():
    model = model_for("micro", lora=2)
    x, y = micro_batch()
    trace = explain.trace_backward(model, x, y)
    frozen = render_html.frozen_from_trace(trace)
    assert sorted(f["name"] for f in frozen) == sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    records = render_html.records_from_trace(trace)
    flagged = {i.source[6:] for r in records for i in r.inputs if i.frozen}
    assert flagged == {f["name"] for f in frozen if f["steps"]}
    assert not any(i.frozen for r in records for i in r.inputs if i.grad_norm is not None)


def fills_script():
    """Injected by the test (not the page's own code): each parameter node's computed fill."""
    return ('<script>Array.prototype.forEach.call(document.querySelectorAll("g.param"), function (g) {'
            'g.setAttribute("data-fill", getComputedStyle(g.querySelector("rect")).fill); });</script></body>')


def grey(rgb):
    r, g, b = map(int, re.findall(r"\d+", rgb)[:3])
    return r == g == b and r < 250


@pytest.mark.parametrize("argv", [["--model", "micro", "--lora", "2"],
                                  ["--finetune", "classifier", "--context-length", "8"]])
def test_chromium_draws_frozen_leaves_grey_and_trainable_ones_not(argv, tmp_path):
    from test_explain_html import errors_in, render
    page = tmp_path / "frozen.html"
    text = run(argv + ["--html", str(page)])
    listed = sections(text)
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", fills_script()), encoding="utf-8")
    dom = render(page, "#step=3")
    assert errors_in(dom) == "" and 'data-ready="1"' in dom
    nodes = re.findall(r'<g class="(param[^"]*)" (data-param|data-frozen-part)="([^"]+)"([^>]*)>', dom)
    drawn_frozen, parts = set(), set()
    for cls, kind, name, rest in nodes:
        fill = re.search(r'data-fill="([^"]+)"', rest).group(1)
        if kind == "data-frozen-part":
            assert "frozen" in cls.split() and grey(fill), (name, cls, fill)
            parts.update(re.search(r'data-params="([^"]+)"', rest).group(1).split())
        elif name in listed["frozen"]:
            assert "frozen" in cls.split() and grey(fill), (name, cls, fill)
            drawn_frozen.add(name)
        else:
            assert name in listed["trainable"], name
            assert "frozen" not in cls.split() and fill == "rgb(255, 248, 214)", (name, cls, fill)
    assert drawn_frozen | parts == set(listed["frozen"]) and not drawn_frozen & parts
    for name in listed["frozen"]:
        assert f'<tr class="frozen" data-param-row="{name}">' in dom, name
    for name in listed["trainable"]:
        assert f'<tr data-param-row="{name}">' in dom, name
    summary = re.search(r'id="summary">([^<]*)', dom).group(1)
    assert f"{len(listed['frozen'])} frozen (grey)" in summary
    if "--lora" in argv:                             # a parameter read by a traced op: dashed, its panel says so
        assert drawn_frozen and len(re.findall(r'<path [^>]*class="edge frozen"', dom)) == len(drawn_frozen)
        details = re.search(r'<div id="details">(.*?)</div>\s*<h2>Parameters', dom, re.S).group(1)
        assert "step 3: Linear" in details and "frozen: no gradient computed (needs_input_grad False)" in details
    else:                                            # chapter 6: no op below the last block ran backward
        assert not drawn_frozen and parts >= {"tok_emb.weight", "trf_blocks.0.att.W_query.weight"}


@pytest.mark.parametrize("expand", ["--expand", "--no-expand"])
def test_dot_graph_draws_frozen_parameters_grey(expand, tmp_path):
    dot = tmp_path / "g.dot"
    run(["--model", "micro", "--lora", "2", "--dot", str(dot), expand])
    text = dot.read_text(encoding="utf-8")
    if expand == "--expand":
        node = re.search(r'"param:out_head\.linear\.weight" \[([^\]]*)\]', text).group(1)
        assert 'fillcolor="gray90"' in node and "frozen" in node
        node = re.search(r'"param:out_head\.lora\.B" \[([^\]]*)\]', text).group(1)
        assert 'fillcolor="lightyellow"' in node and "grad " in node
    else:
        assert re.search(r'"block:trf_blocks\.0" \[[^\]]*parameter tensors \(\d+ frozen\)', text)
