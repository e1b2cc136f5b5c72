"""The engine's backward trace (explain.py) over the book's own ch04.GPTModel running on
tinygrad_gpt.torch: every op named by the book's module that made it. Needs the book's
package (llms_from_scratch), not PyTorch."""
import io
import re
from collections import Counter

import numpy as np
import pytest
from helpers import require

require("llms_from_scratch")

import tinygrad_gpt.torch as torch                                       # noqa: E402
from tinygrad_gpt import kernels                                          # noqa: E402
from tinygrad_gpt.explain.book import book_gpt_model, explain_book_backward, trace_book_backward  # noqa: E402

CFG = {"vocab_size": 97, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}


def test_trace_names_the_books_modules_and_its_composed_ops():
    model = book_gpt_model(CFG, seed=1)
    assert type(model).__module__ == "llms_from_scratch.ch04"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 97, (2, 8)), rng.integers(0, 97, (2, 8))
    trace = trace_book_backward(model, x, y)
    by_module = {}
    for op in trace.ops:
        by_module.setdefault(op.module, Counter())[op.name] += 1
    # the book's LayerNorm: mean, var, sqrt; its GELU: x ** 3 and tanh; its attention: matmul,
    # masked_fill_ (recorded as MaskedFill), softmax
    assert by_module["trf_blocks.0.norm1"] >= Counter({"Mean": 1, "Var": 1, "Sqrt": 1, "Sub": 1, "Div": 1})
    assert by_module["trf_blocks.1.ff.layers.1"] >= Counter({"Pow": 1, "Tanh": 1})
    # every op of both blocks' attention, the one masked_fill_ moved to a new node included
    # (queries @ keys^T: its MatMul must keep the att tag, not lose it or take another block's)
    for k in (0, 1):
        assert by_module[f"trf_blocks.{k}.att"] == Counter({"Permute": 5, "Reshape": 4, "MatMul": 2,
                                                            "Div": 1, "MaskedFill": 1, "Softmax": 1})
    modules = {n for n, _ in model.named_modules()} | {"loss"}
    assert None not in by_module and set(by_module) <= modules, set(by_module) - modules
    assert by_module["trf_blocks.0.att.W_query"] == Counter({"Linear": 1})
    assert by_module["loss"] == Counter({"CrossEntropy": 1}) and trace.ops[0].name == "CrossEntropy"
    names = [n for n, _ in model.named_parameters()]
    assert sorted(trace.received) == sorted(names) and set(trace.received.values()) == {1}
    # tracing changes nothing: the same gradients as a plain backward
    traced = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.tensor(x)).flatten(0, 1), torch.tensor(y).flatten())
    loss.backward()
    assert loss.item() == pytest.approx(trace.loss, rel=1e-6)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, traced[n], rtol=1e-6, atol=1e-9, err_msg=n)


def test_explain_book_backward_prints_the_listing_and_the_totals():
    out = io.StringIO()
    trace, model = explain_book_backward(context_length=16, depth=12, file=out)
    text = out.getvalue()
    print("\n" + text[:3000])
    assert "llms_from_scratch.ch04.GPTModel (tiny)" in text
    assert re.search(r"^\s+2\s+Linear\s+out_head\s", text, re.M)
    assert "-> out_head.weight (50257x64) receives its gradient" in text
    assert f"... {len(trace.ops) - 12} more ops not listed" in text
    n = len(list(model.parameters()))
    assert f"parameters reached: {n} of {n} tensors" in text
    assert "MaskedFill" in text and "Var" in text


# ----------------------------------------------------------------------------- explain_backward.py --book
def explain_cli(*argv):
    from tinygrad_gpt import explain
    out = io.StringIO()
    code = explain.main(["--book", *argv], file=out)
    return code, out.getvalue()


def test_explain_cli_book_flag_traces_the_books_model_as_the_function_does():
    code, text = explain_cli("--context-length", "16", "--depth", "50")
    assert code == 0
    out = io.StringIO()
    with kernels.use("numpy"):                                               # the command's default
        trace, model = explain_book_backward(context_length=16, depth=50, file=out)
    timing = re.compile(r"backward took \d+\.\d+ s")                       # the same run, word for word,
    assert timing.sub("", text) == timing.sub("", out.getvalue())            # but for the timing
    assert "llms_from_scratch.ch04.GPTModel (tiny)" in text and "kernels numpy" in text
    # the book's own module names, down to its attention's in-place masking
    listed = re.findall(r"^\s+(\d+)\s+(\w+)\s+(\S+)\s+tinygrad_gpt/", text, re.M)
    assert len(listed) == 50 and [int(s) for s, _, _ in listed] == list(range(1, 51))
    names = {n for n, _ in model.named_modules()} | {"loss"}
    assert {m for _, _, m in listed} <= names
    assert ("MaskedFill", "trf_blocks.1.att") in {(op, m) for _, op, m in listed}
    assert f"ops visited: {len(trace.ops)} " in text


def test_explain_cli_book_param_and_dot(tmp_path):
    code, text = explain_cli("--context-length", "8", "--param", "trf_blocks.0.att.W_query.weight",
                             "--dot", str(tmp_path / "g.dot"))
    assert code == 0
    chain = re.findall(r"^\s+\d+\s+(\w+)\s+(\S+)\s+\d", text, re.M)
    assert chain[0] == ("CrossEntropy", "loss") and chain[-1] == ("Linear", "trf_blocks.0.att.W_query")
    assert ("MaskedFill", "trf_blocks.0.att") in chain
    assert "-> trf_blocks.0.att.W_query.weight (64x64): gradient norm" in text
    dot = (tmp_path / "g.dot").read_text()
    # the book's TransformerBlock is a block: one cluster each (none without the class-name check)
    assert dot.count("subgraph \"cluster_trf_blocks.") == 2 and "the book's GPTModel (tiny)" in dot


def test_explain_cli_book_usage_errors(capsys, monkeypatch):
    assert explain_cli("--param", "trf_blocks.0.att.W_q")[0] == 2
    assert "did you mean trf_blocks.0.att.W_query.weight" in capsys.readouterr().err
    # flags of the explain command that --book does not pass on are refused, not ignored:
    # those of today, and any added later
    for flag in ("--values", "--step"):
        assert explain_cli(flag)[0] == 2
        assert capsys.readouterr().err == f"explain_backward.py: error: --book does not take {flag}\n"
    assert explain_cli("--html", "x.html", "--values")[0] == 2
    assert capsys.readouterr().err == "explain_backward.py: error: --book does not take --values, --html\n"
    from tinygrad_gpt.explain import cli
    plain = cli.build_parser

    def with_a_new_flag():
        p = plain()
        p.add_argument("--future-flag", action="store_true")
        return p
    monkeypatch.setattr(cli, "build_parser", with_a_new_flag)
    assert explain_cli("--future-flag")[0] == 2
    assert capsys.readouterr().err == "explain_backward.py: error: --book does not take --future-flag\n"


def test_explain_cli_book_micro_reads_its_sentence_with_its_characters():
    code, text = explain_cli("--model", "micro", "--depth", "3")
    assert code == 0
    assert text.startswith("Using the micro model's sentence 'Every effort moves you onward.'")
    assert "GPTModel (micro) on tinygrad_gpt's engine: 1,200 parameters in 18 tensors" in text
    assert re.search(r"^\s+1\s+CrossEntropy\s+loss\s.*1x8x17 ", text, re.M)   # 17 characters, context 8
    assert "parameters reached: 18 of 18 tensors" in text
