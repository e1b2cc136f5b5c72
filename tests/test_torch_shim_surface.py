"""tinygrad_gpt.torch on its own (no PyTorch needed): the names the book's code uses, what the
engine adds for them (Var, Where, in-place masked_fill_ with a version counter), the errors
for what is outside, and `python -m tinygrad_gpt.torch SCRIPT`."""
import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import require

import tinygrad_gpt.torch as torch
import tinygrad_gpt.torch.nn as nn
from tinygrad_gpt.data import SAMPLE_TEXT_PATH
from tinygrad_gpt.gradcheck import gradcheck, max_gradcheck_error
from tinygrad_gpt.tensor import Tensor
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer

engine = importlib.import_module("tinygrad_gpt.tensor")
ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def f64(*shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


# ----------------------------------------------------------------------------- new engine ops
@pytest.mark.parametrize("dim,keepdim,unbiased", [(-1, True, False), (0, False, True), (None, False, False),
                                                  ((0, 2), True, True)])
def test_var_matches_numpy_and_passes_gradcheck_in_float64(dim, keepdim, unbiased):
    x = f64(3, 4, 5)
    out = x.var(dim=dim, keepdim=keepdim, unbiased=unbiased)
    np.testing.assert_allclose(out.data, np.var(x.data, axis=dim, ddof=int(unbiased), keepdims=keepdim), rtol=1e-12)
    err = max_gradcheck_error(lambda t: t.var(dim=dim, keepdim=keepdim, unbiased=unbiased), [x])
    print(f"\nVar dim={dim}: worst gradcheck error {err:.2e}")
    assert gradcheck(lambda t: t.var(dim=dim, keepdim=keepdim, unbiased=unbiased), [x])


def test_var_keeps_float32():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = x.var(dim=-1, keepdim=True, unbiased=False)
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32


def test_where_sends_each_gradient_to_the_side_it_came_from_gradcheck():
    a, b = f64(3, 4), f64(4, seed=1)                      # b broadcasts
    cond = np.random.default_rng(2).random((3, 4)) > 0.5
    assert gradcheck(lambda a, b: torch.where(cond, a, b), [a, b])
    np.testing.assert_array_equal(torch.where(cond, a, b).data, np.where(cond, a.data, b.data))


def test_triu_tril_and_topk_values_are_differentiable_gradcheck():
    x = f64(4, 4)
    assert gradcheck(lambda t: torch.triu(t, diagonal=1), [x])
    assert gradcheck(lambda t: torch.tril(t), [x])
    np.testing.assert_array_equal(torch.triu(x, diagonal=1).data, np.triu(x.data, 1))
    values, indices = torch.topk(x, 2)
    np.testing.assert_array_equal(values.data, -np.sort(-x.data, axis=-1)[:, :2])
    np.testing.assert_array_equal(np.take_along_axis(x.data, indices.data, -1), values.data)
    assert gradcheck(lambda t: torch.topk(t, 3).values, [x])


# ----------------------------------------------------------------------------- in place, version counter
MASK = np.triu(np.ones((4, 4), dtype=bool), 1)


def book_attention(q, k, v):
    """The book's pattern: scores made by a matmul, masked in place, softmax, weights @ v."""
    scores = q @ k.transpose(1, 2)
    scores.masked_fill_(MASK, -torch.inf)
    return torch.softmax(scores / 2.0, dim=-1) @ v


def test_masked_fill_in_place_on_a_graph_node_records_the_book_attention_correctly_gradcheck():
    q, k, v = f64(2, 4, 3), f64(2, 4, 3, seed=1), f64(2, 4, 3, seed=2)
    assert gradcheck(book_attention, [q, k, v])
    out = book_attention(q, k, v)                         # the same as the out-of-place op
    s = (q @ k.transpose(1, 2)).masked_fill(MASK, -math.inf)
    np.testing.assert_allclose(out.data, torch.softmax(s / 2.0, dim=-1).data @ v.data, rtol=1e-12)


def test_masked_fill_in_place_after_another_op_read_the_old_value_errors_in_backward():
    q = f64(2, 4, 4)
    s = q * 1.0
    early = s + 1.0                                       # read the old value; saved nothing
    s.masked_fill_(MASK, 0.0)
    assert s._version == 1
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        (early.sum() + s.sum()).backward()


def test_without_the_version_check_that_backward_would_give_a_wrong_gradient(monkeypatch):
    """Why the check exists: the Add's edge leads to `s`, now the filled node, so the gradient
    of `early` would be masked too. Out of place, every element of q gets 2."""
    monkeypatch.setattr(engine, "_check_versions", lambda ctx: None)
    q = f64(2, 4, 4)
    s = q * 1.0
    early = s + 1.0
    s.masked_fill_(MASK, 0.0)
    (early.sum() + s.sum()).backward()
    np.testing.assert_array_equal(q.grad, np.broadcast_to(2.0 * ~MASK, q.shape))   # early's share masked too
    assert not np.allclose(q.grad, 1.0 + ~MASK)           # the true one: 1 + (1 where not filled)


def test_masked_fill_in_place_refuses_when_the_old_value_is_saved_for_backward_or_shared():
    q, w = f64(2, 4, 4), f64(4, 4, seed=1)
    s = q @ w
    product = s * w                                       # Mul saved s's array for its backward
    with pytest.raises(NotImplementedError, match="masked_fill_: this tensor's memory is shared"):
        s.masked_fill_(MASK, 0.0)
    s = q @ w
    view = s.view(-1)                                     # in torch the view would change too
    with pytest.raises(NotImplementedError, match="shared"):
        s.masked_fill_(MASK, 0.0)
    s = q @ w
    array = s.numpy()
    with pytest.raises(NotImplementedError, match="shared"):
        s.masked_fill_(MASK, 0.0)
    del product, view, array


def test_masked_fill_in_place_on_a_leaf_that_requires_grad_errors_unless_no_grad():
    x = f64(4, 4)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        x.masked_fill_(MASK, 0.0)
    with torch.no_grad():
        x.masked_fill_(MASK, 0.0)
    assert x.requires_grad and x._ctx is None and (x.data[MASK] == 0).all()
    m = torch.ones(4, 4)                                  # a plain tensor: just new values
    m.masked_fill_(MASK, 5.0)
    assert m.data[0, 3] == 5.0 and m.data[3, 0] == 1.0 and not m.requires_grad


# ----------------------------------------------------------------------------- making tensors
def test_torch_tensor_gives_torchs_dtypes_and_copies():
    assert torch.tensor([1, 2, 3]).dtype == np.int64 == torch.long
    assert torch.tensor([1.0, 2]).dtype == np.float32 == torch.float32
    assert torch.tensor(2.0 / torch.pi).shape == () and torch.tensor(2.0).dtype == np.float32
    assert torch.tensor(True).dtype == np.bool_ and torch.tensor(3).dtype == np.int64
    source = np.arange(4, dtype=np.float64)
    t = torch.tensor(source)
    source[0] = 99
    assert t.dtype == np.float64 and t.data[0] == 0       # a NumPy array keeps its dtype, copied
    assert torch.tensor([1, 2], dtype=torch.float32).dtype == np.float32
    assert torch.tensor([[1, 2]], requires_grad=False).unsqueeze(0).shape == (1, 1, 2)
    assert torch.arange(5).dtype == np.int64 and torch.arange(0.0, 1.0, 0.5).dtype == np.float32
    assert torch.ones(2, 3).dtype == np.float32 and torch.zeros((2, 3)).shape == (2, 3)
    torch.manual_seed(1)
    a = torch.rand(3)
    torch.manual_seed(1)
    assert np.array_equal(a.data, torch.rand(3).data) and a.dtype == np.float32


def test_tensor_methods_the_book_calls():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    assert x.numel() == 3 and x.squeeze(0).shape == (3,) and x.squeeze(1).shape == (1, 3)
    assert x.contiguous() is x and x.to("cpu") is x and x.to(torch.device("cpu")) is x
    assert x.to(torch.float64).dtype == np.float64
    assert x.mean(dim=-1, keepdim=True).shape == (1, 1)
    assert x.var(dim=-1, unbiased=False).item() == pytest.approx(np.var([1, 2, 4]))
    assert x.flatten().tolist() == [1.0, 2.0, 4.0] and x.bool().dtype == np.bool_
    assert str(x.device) == "cpu" and x.device == "cpu"
    idx = torch.tensor([[7]])
    assert (idx == 7) and not (idx == None) and (idx != 8)   # noqa: E711  (the book's `idx_next == eos_id`)
    assert float(torch.tensor(2.5)) == 2.5 and int(torch.tensor(3)) == 3
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(torch.tensor([1, 2]))


def test_other_devices_are_a_clear_error():
    with pytest.raises(NotImplementedError, match="device 'cuda' is not available.*CPU"):
        torch.ones(2).to("cuda")
    with pytest.raises(NotImplementedError, match="'cuda:1'"):
        nn.Linear(2, 2).to(torch.device("cuda:1"))
    with pytest.raises(NotImplementedError, match="torch.arange: device 'mps'"):
        torch.arange(3, device="mps")
    assert not torch.cuda.is_available() and not torch.backends.mps.is_available()
    model = nn.Linear(2, 2)
    assert model.to("cpu") is model


def test_outside_the_surface_raises_notimplementederror_naming_the_function():
    for what, call in [("torch.compile", lambda: torch.compile(nn.Linear(2, 2))),
                       ("torch.nn.Conv2d", lambda: nn.Conv2d(1, 1, 3)),
                       ("torch.nn.functional.mse_loss", lambda: nn.functional.mse_loss),
                       ("torch.optim.RMSprop", lambda: torch.optim.RMSprop),
                       ("torch.utils.data.TensorDataset", lambda: torch.utils.data.TensorDataset),
                       ("Tensor.clamp", lambda: torch.ones(2).clamp(0, 1)),
                       ("torch.nn.Module.half", lambda: nn.Linear(2, 2).half()),
                       ("label_smoothing", lambda: nn.functional.cross_entropy(torch.ones(2, 3),
                                                                               torch.tensor([0, 1]),
                                                                               label_smoothing=0.1)),
                       ("approximate='none'", lambda: nn.GELU())]:
        with pytest.raises(NotImplementedError, match=re.escape(what)):
            call()
    assert not hasattr(torch, "compile") and not hasattr(torch.ones(1), "clamp")   # still AttributeErrors
    with pytest.raises(AttributeError, match="no attribute 'typo'"):
        nn.Linear(2, 2).typo


# ----------------------------------------------------------------------------- modules
class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(3, 2, bias=False) for _ in range(2)])
        self.norm = nn.LayerNorm(2)
        self.register_buffer("mask", torch.triu(torch.ones(3, 3), diagonal=1))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x):
        return self.norm(torch.cat([h(x) for h in self.heads], dim=-1)[..., :2])


def test_register_buffer_is_in_state_dict_not_in_parameters_and_loads():
    m = WithBuffer()
    assert [n for n, _ in m.named_parameters()] == ["heads.0.weight", "heads.1.weight", "norm.weight", "norm.bias"]
    assert list(m.state_dict()) == ["mask", "heads.0.weight", "heads.1.weight", "norm.weight", "norm.bias"]
    assert [n for n, _ in m.named_buffers()] == ["mask", "scratch"]
    assert all(p is not m.mask for p in m.parameters())
    state = {k: np.full(v.shape, 0.5, dtype=np.float32) for k, v in m.state_dict().items()}
    result = m.load_state_dict(state)
    assert result.missing_keys == [] == result.unexpected_keys and (m.mask.data == 0.5).all()
    with pytest.raises(RuntimeError, match="missing keys \\['mask'\\]"):
        m.load_state_dict({k: v for k, v in state.items() if k != "mask"})
    assert len(m.heads) == 2 and isinstance(m.heads[1], nn.Linear)
    assert m(torch.ones(1, 3)).shape == (1, 2)


def test_parameter_linear_embedding_sequential_keep_torchs_names():
    seq = nn.Sequential(nn.Embedding(10, 4), nn.Dropout(0.1), nn.Linear(4, 3))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "2.weight", "2.bias"]
    p = nn.Parameter(torch.rand(2, 3))
    assert p.requires_grad and isinstance(p, torch.Tensor)
    assert seq(torch.tensor([[1, 2]])).shape == (1, 2, 3)
    assert sum(p.numel() for p in seq.parameters()) == 40 + 12 + 3


# ----------------------------------------------------------------------------- data
class Numbers(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([i, i]), torch.tensor(i)


def test_dataloader_batches_drop_last_and_collates_like_torch():
    loader = torch.utils.data.DataLoader(Numbers(7), batch_size=3, shuffle=False, drop_last=False, num_workers=0)
    batches = list(loader)
    assert len(loader) == 3 and [x.shape for x, _ in batches] == [(3, 2), (3, 2), (1, 2)]
    assert batches[0][0].dtype == np.int64 and batches[2][1].tolist() == [6]
    dropped = torch.utils.data.DataLoader(Numbers(7), batch_size=3, drop_last=True)
    assert len(dropped) == 2 and len(list(dropped)) == 2


def test_dataloader_shuffle_is_seeded_by_its_generator_or_by_manual_seed():
    def order(**kw):
        return [y.tolist() for _, y in torch.utils.data.DataLoader(Numbers(10), batch_size=10, shuffle=True, **kw)][0]

    g = lambda s: torch.Generator().manual_seed(s)   # noqa: E731
    assert order(generator=g(1)) == order(generator=g(1)) != order(generator=g(2))
    assert sorted(order(generator=g(1))) == list(range(10)) != order(generator=g(1))
    torch.manual_seed(5)
    first = order()
    torch.manual_seed(5)
    assert order() == first
    loader = torch.utils.data.DataLoader(Numbers(10), batch_size=10, shuffle=True, generator=g(3))
    assert next(iter(loader))[1].tolist() != next(iter(loader))[1].tolist()   # a new order each epoch


def test_subset_picks_the_given_samples():
    sub = torch.utils.data.Subset(Numbers(10), [7, 2, 5])
    assert len(sub) == 3 and sub[1][1].item() == 2
    assert [y.tolist() for _, y in torch.utils.data.DataLoader(sub, batch_size=2)] == [[7, 2], [5]]


# ----------------------------------------------------------------------------- the runner
def run(*args, cwd=ROOT, timeout=600):
    return subprocess.run([PYTHON, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_plain_import_of_tinygrad_gpt_binds_no_torch():
    done = run("-c", "import sys, tinygrad_gpt, tinygrad_gpt.torch; print('torch' in sys.modules, "
                     "sys.modules.get('tiktoken').get_encoding.__module__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "tiktoken.registry"]


def test_runner_binds_torch_and_offline_tiktoken_for_an_unmodified_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
        "from torch.utils.data import DataLoader, Dataset\nimport tiktoken\n"
        "print(torch.__name__, nn.Linear.__module__, F.cross_entropy.__module__, DataLoader.__module__)\n"
        "print(tiktoken.get_encoding('gpt2').encode('Hello, world'), sys.argv[1:])\n"
        "print(__name__)\n", encoding="utf-8")
    done = run("-m", "tinygrad_gpt.torch", str(script), "--flag", "x")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("tinygrad_gpt.torch tinygrad_gpt.torch.nn tinygrad_gpt.torch.nn.functional "
                        "tinygrad_gpt.torch.utils.data")
    assert lines[1] == "[15496, 11, 995] ['--flag', 'x']" and lines[2] == "__main__"


def test_runner_usage_errors_are_one_line_and_exit_2(tmp_path):
    for args in ([], [str(tmp_path / "missing.py")]):
        done = run("-m", "tinygrad_gpt.torch", *args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("python -m tinygrad_gpt.torch: error: ")
        assert "usage: python -m tinygrad_gpt.torch SCRIPT" in done.stderr


def test_explain_book_without_the_books_package_is_one_line_and_exit_2():
    """examples/explain_backward.py --book where llms_from_scratch does not import (here: made
    unimportable with a None in sys.modules, so the test runs with or without the package)."""
    code = ("import sys; sys.modules['llms_from_scratch'] = None; sys.argv[0] = 'explain_backward.py'\n"
            "from tinygrad_gpt.explain import main\nsys.exit(main(['--book', '--depth', '3']))\n")
    done = run("-c", code)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr == ("explain_backward.py: error: --book traces the book's own llms_from_scratch.ch04."
                           "GPTModel, and the package llms_from_scratch is not installed: pip install "
                           "--no-deps llms-from-scratch==1.0.19\n")


EVAL = re.compile(r"^Ep (\d+) \(Step (\d{6})\): Train loss (\d+\.\d{3}), Val loss (\d+\.\d{3})$")
SMALL = ["--data", str(SAMPLE_TEXT_PATH), "--max-chars", "5000", "--context-length", "32", "--emb-dim", "32",
         "--n-heads", "2", "--n-layers", "2", "--num-epochs", "2", "--eval-freq", "4", "--eval-iter", "2"]


def test_book_ch05_script_trains_on_the_engine_and_prints_the_books_lines():
    done = run("-m", "tinygrad_gpt.torch", "examples/book_ch05.py", *SMALL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    print("\n" + "\n".join(lines))
    text = SAMPLE_TEXT_PATH.read_text(encoding="utf-8")[:5000]
    assert lines[0] == f"Characters: 5000 Tokens: {len(get_gpt2_tokenizer().encode(text))}"
    assert lines[1] == "train batches 17 val batches 2"
    start_train, start_val = (float(lines[i].split(": ")[1]) for i in (2, 3))
    assert lines[2].startswith("Training loss: ") and lines[3].startswith("Validation loss: ")
    assert abs(start_train - math.log(50257)) < 0.5 and abs(start_val - math.log(50257)) < 0.5
    evals = [EVAL.match(s) for s in lines[4:] if s.startswith("Ep ")]
    assert all(evals) and len(evals) == 9                   # steps 0, 4, ..., 32 of 2 x 17
    assert [int(m[2]) for m in evals] == list(range(0, 33, 4))
    samples = [s for s in lines if s.startswith("Every effort moves you")]
    assert len(samples) == 2 and all(len(s) > len("Every effort moves you") + 50 for s in samples)
    val = [float(m[4]) for m in evals]
    assert val == sorted(val, reverse=True) and val[-1] < val[0] - 0.05   # the same val batches: it learns


def test_book_ch05_script_is_plain_pytorch_too():
    """The same file, the same flags, on real PyTorch (tiktoken's download replaced by the
    offline encoding): the same lines, other numbers (PyTorch's own initialisation)."""
    require("torch")
    code = ("import runpy, sys, tiktoken\nfrom tinygrad_gpt.tokenizer import get_gpt2_tokenizer\n"
            "tiktoken.get_encoding = lambda name: get_gpt2_tokenizer()\n"
            "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    real = run("-c", code, "examples/book_ch05.py", *SMALL)
    ours = run("-m", "tinygrad_gpt.torch", "examples/book_ch05.py", *SMALL)
    assert real.returncode == 0 == ours.returncode, real.stderr + ours.stderr
    shape = lambda out: [re.sub(r"\d+\.\d+", "#", s) for s in out.splitlines()   # noqa: E731
                         if not s.startswith("Every effort")]
    assert shape(real.stdout) == shape(ours.stdout)
    assert real.stdout.splitlines()[:2] == ours.stdout.splitlines()[:2]      # the same text and batches


def test_multinomial_argmax_cat_stack_the_way_the_books_generate_uses_them():
    torch.manual_seed(0)
    assert torch.multinomial(torch.tensor([[0.0, 1.0, 0.0]]), num_samples=1).tolist() == [[1]]
    draws = torch.multinomial(torch.tensor([[0.2, 0.8]] * 4000), num_samples=1)
    assert draws.dtype == np.int64 and draws.shape == (4000, 1)
    assert abs(draws.data.mean() - 0.8) < 0.03
    pair = torch.multinomial(torch.tensor([0.5, 0.25, 0.25]), num_samples=2)
    assert pair.shape == (2,) and len(set(pair.tolist())) == 2          # without replacement
    g = lambda: torch.Generator().manual_seed(4)   # noqa: E731
    probs = torch.softmax(torch.tensor([[1.0, 2.0, 3.0]]), dim=-1)
    assert torch.multinomial(probs, 5, replacement=True, generator=g()).tolist() == \
        torch.multinomial(probs, 5, replacement=True, generator=g()).tolist()
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.0]])
    nxt = torch.argmax(logits, dim=-1, keepdim=True)
    assert nxt.shape == (2, 1) and nxt.tolist() == [[1], [0]] and nxt.dtype == np.int64
    idx = torch.cat((torch.tensor([[5, 6], [7, 8]]), nxt), dim=1)
    assert idx.tolist() == [[5, 6, 1], [7, 8, 0]] and idx.dtype == np.int64
    assert torch.stack([torch.ones(2), torch.zeros(2)], dim=1).tolist() == [[1, 0], [1, 0]]


# ----------------------------------------------------------------------------- chapters 6, 7, appendices D, E
def test_nonzero_squeeze_numel_and_indexed_assignment_as_the_books_collate_uses_them():
    targets = torch.tensor([5, 50256, 50256, 50256])
    indices = torch.nonzero(targets == 50256).squeeze()
    assert indices.dtype == np.int64 and indices.tolist() == [1, 2, 3] and indices.numel() == 3
    targets[indices[1:]] = -100
    assert targets.tolist() == [5, 50256, -100, -100] and targets._version == 1
    one = torch.nonzero(torch.tensor([0, 1, 0]) == 1)
    assert one.shape == (1, 1) and one.squeeze().shape == () and one.squeeze().numel() == 1
    rows, cols = torch.nonzero(torch.tensor([[0, 1], [1, 0]]), as_tuple=True)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="indexed assignment into a tensor that requires grad"):
        w[0] = 2.0


def test_empty_and_nn_init_fill_in_place_with_torchs_bounds():
    a = nn.Parameter(torch.empty(64, 4))
    array = a.data
    torch.manual_seed(0)
    assert nn.init.kaiming_uniform_(a, a=math.sqrt(5)) is a and a.data is array     # in place
    assert 0.45 < np.abs(a.data).max() <= 0.5 and a.dtype == np.float32            # 1 / sqrt(fan_in = 4)
    nn.init.zeros_(a)
    assert not a.data.any()
    nn.init.normal_(a, mean=1.0, std=0.01)
    assert abs(a.data.mean() - 1.0) < 0.01
    with pytest.raises(NotImplementedError, match="torch.nn.init.orthogonal_"):
        nn.init.orthogonal_(a)


def test_module_replacement_named_children_requires_grad_and_grad_data():
    seq = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert [n for n, _ in seq.named_children()] == ["0", "1"]
    assert (seq[0].in_features, seq[0].out_features) == (3, 4)
    setattr(seq, "1", nn.Linear(4, 5))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert seq(torch.ones(2, 3)).shape == (2, 5)
    seq.requires_grad_(False)
    assert not any(p.requires_grad for p in seq.parameters())
    seq[1].weight.requires_grad = True
    seq(torch.ones(2, 3)).sum().backward()
    assert seq[0].weight.grad is None and seq[1].bias.grad is None
    g = seq[1].weight.grad
    assert g.data.flatten().max() == g.max() and g.shape == (5, 4)               # torch's p.grad.data


def test_clip_grad_norm_returns_the_norm_and_scales_every_gradient():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(4))
    p.grad, q.grad = np.full(3, 3.0, dtype=np.float32), np.full(4, 4.0, dtype=np.float32)
    norm = torch.nn.utils.clip_grad_norm_([p, q], max_norm=1.0)
    assert norm.item() == pytest.approx(math.sqrt(27 + 64)) and norm.dtype == np.float32
    assert math.sqrt(float((p.grad ** 2).sum() + (q.grad ** 2).sum())) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(NotImplementedError, match="norm_type"):
        torch.nn.utils.clip_grad_norm_([p], 1.0, norm_type=1)


def test_save_and_load_write_safetensors_never_pickle(tmp_path):
    import safetensors.numpy
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    assert set(safetensors.numpy.load_file(str(path))) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    state = torch.load(path, weights_only=True)
    assert list(state) == list(model.state_dict())             # the state_dict's order
    other = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other[0].weight.data, model[0].weight.data)
    with pytest.raises(NotImplementedError, match="only tensors can be saved here, as safetensors"):
        torch.save({"model": model.state_dict()}, tmp_path / "nested.pth")
    assert not (tmp_path / "nested.pth").exists()
    (tmp_path / "real.pth").write_bytes(b"PK\x03\x04" + b"\0" * 64)   # what real torch.save writes: a zip
    with pytest.raises(ValueError, match="real.pth is a pickle \\(zip\\) file from real PyTorch"):
        torch.load(tmp_path / "real.pth")


# ----------------------------------------------------------------------------- the engine without the wing
def test_the_plain_engine_has_no_torch_semantics_until_the_shim_is_imported():
    """PyTorch's semantics are the torch wing's: a process that imports only the engine has no
    in-place masked_fill_, no .to()/.device, no semantics hook on its ops (Function.apply pays
    for none), and a missing attribute is a plain AttributeError; importing the shim adds them."""
    code = ("import numpy as np, tinygrad_gpt as tg\n"
            "from tinygrad_gpt import observe\n"
            "x = tg.Tensor(np.ones((2, 2), np.float32))\n"
            "print(hasattr(x, 'masked_fill_'), hasattr(x, 'to'), hasattr(x, 'device'), len(observe._semantics_hooks))\n"
            "try:\n    x.frobnicate\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "import tinygrad_gpt.torch\n"
            "print(hasattr(x, 'masked_fill_'), hasattr(x, 'to'), hasattr(x, 'device'), len(observe._semantics_hooks))\n"
            "try:\n    x.frobnicate\nexcept Exception as e:\n    print(type(e).__name__)\n")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["False False False 0", "AttributeError", "True True True 1", "MissingFeature"]


def test_function_apply_calls_no_torch_bookkeeping():
    import inspect
    source = inspect.getsource(engine.Function.apply)
    assert not re.search(r"shared|check_inputs|torch|spellings", source), source


def test_an_op_given_a_non_tensor_is_still_a_type_error_in_the_plain_engine():
    code = ("import numpy as np\nfrom tinygrad_gpt import functional as F\n"
            "try:\n    F.gelu(np.ones(3))\nexcept TypeError as e:\n    print(e)\n")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "gelu(): argument 'input' must be Tensor, not numpy.ndarray", out.stderr


# ----------------------------------------------------------------------------- names the book's own tests use
def test_size_equal_relu_sgd_and_bfloat16_the_books_tests_call():
    x = torch.ones(2, 3)
    assert x.size() == torch.Size([2, 3]) and x.size(1) == 3 and x.size(-1) == 3 and x.size == 6
    assert torch.equal(x, torch.ones(2, 3)) and not torch.equal(x, torch.ones(3, 2)) and not torch.equal(x, x * 2)
    a = f64(3, 4)
    assert gradcheck(lambda t: nn.ReLU()(t), [a])
    np.testing.assert_array_equal(nn.ReLU()(a).data, np.maximum(a.data, 0))
    w = nn.Parameter(torch.tensor([1.0, -2.0]).data)
    opt = torch.optim.SGD([w], lr=0.5)
    (w * torch.tensor([3.0, 4.0])).sum().backward()
    opt.step()
    np.testing.assert_array_equal(w.data, np.array([1.0 - 1.5, -2.0 - 2.0], np.float32))
    b = torch.tensor([1.0001, 3.14159, -2.5e-3], dtype=torch.bfloat16)
    assert b.dtype == np.float32                                     # stored in float32, said plainly
    np.testing.assert_array_equal(b.data, np.array([1.0, 3.140625, -0.0025024414], np.float32))
    y = f64(4).float().to(torch.bfloat16)
    assert np.all((y.data.view(np.uint32) & 0xFFFF) == 0)            # bf16 values: the low 16 bits zero


# ----------------------------------------------------------------------------- Llama 3.2 / Qwen3's ops (ops.py)
def positive(*shape, seed=0):
    return Tensor(np.random.default_rng(seed).uniform(0.5, 2.0, shape), requires_grad=True)


@pytest.mark.parametrize("name,fn,make,expect", [
    ("sin", lambda t: t.sin(), f64, np.sin),
    ("cos", lambda t: torch.cos(t), f64, np.cos),
    ("abs", lambda t: t.abs(), f64, np.abs),
    ("rsqrt", lambda t: torch.rsqrt(t), positive, lambda a: 1 / np.sqrt(a)),
    ("pow", lambda t: t.pow(3), f64, lambda a: a ** 3),
    ("base ** x", lambda t: 2.5 ** t, f64, lambda a: 2.5 ** a),   # RoPE: theta ** (2i / D)
    ("silu", lambda t: nn.functional.silu(t), f64, lambda a: a / (1 + np.exp(-a))),
    ("SiLU", lambda t: nn.SiLU()(t), f64, lambda a: a / (1 + np.exp(-a))),
])
def test_elementwise_ops_of_llama_and_qwen_match_numpy_and_pass_gradcheck_in_float64(name, fn, make, expect):
    x = make(3, 5)
    np.testing.assert_allclose(fn(x).data, expect(x.data), rtol=1e-12)
    err = max_gradcheck_error(fn, [x])
    print(f"\n{name}: worst gradcheck error {err:.2e}")
    assert gradcheck(fn, [x])


def test_elementwise_ops_keep_float32():
    x = Tensor(np.linspace(0.5, 2, 6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    for fn in (torch.sin, torch.cos, torch.rsqrt, torch.abs, nn.functional.silu, lambda t: 10.0 ** t):
        y = fn(x)
        y.sum().backward()
        assert y.dtype == np.float32 and x.grad.dtype == np.float32, fn


@pytest.mark.parametrize("dim", [1, -1, None])
def test_repeat_interleave_repeats_each_slice_in_a_row_and_sums_the_copies_gradients(dim):
    x = f64(2, 3, 4)
    out = x.repeat_interleave(2, dim=dim)
    np.testing.assert_array_equal(out.data, np.repeat(x.data, 2, axis=dim))
    assert gradcheck(lambda t: t.repeat_interleave(3, dim=dim), [x])
    keys = torch.tensor([[1.0, 2.0], [3.0, 4.0]])                       # [K1, K2] -> [K1, K1, K2, K2]
    assert torch.repeat_interleave(keys, 2, dim=0).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]


def test_expand_broadcasts_without_copy_and_sums_back_gradcheck():
    x = f64(2, 1, 3)
    out = x.expand(2, 4, -1)
    assert out.shape == (2, 4, 3) and np.shares_memory(out.data, x.data)
    assert gradcheck(lambda t: t.expand(5, 2, 4, 3), [x])


def test_gather_reads_along_dim_gradcheck():
    x = f64(3, 5)
    index = np.array([[4, 0], [1, 1], [2, 3]])
    np.testing.assert_array_equal(torch.gather(x, 1, torch.tensor(index)).data, np.take_along_axis(x.data, index, 1))
    assert gradcheck(lambda t: t.gather(1, index), [x])


def test_scatter_in_place_writes_src_and_sends_gradients_to_both_gradcheck():
    """Qwen3's MoE: zeros_like(scores).scatter_(dim=-1, index=topk indices, src=probs)."""
    index = np.array([[[3], [0]], [[1], [1]]])                            # (2, 2, 1)

    def gating(scores, probs):
        g = torch.zeros_like(scores)
        g.scatter_(dim=-1, index=torch.tensor(index), src=probs)
        return g * scores                                                 # a graph through both

    scores, probs = f64(2, 2, 4), f64(2, 2, 1, seed=1)
    g = torch.zeros_like(scores).scatter_(-1, torch.tensor(index), probs)
    expect = np.zeros((2, 2, 4))
    np.put_along_axis(expect, index, probs.data, axis=-1)
    np.testing.assert_array_equal(g.data, expect)
    assert g.requires_grad and g._version == 1
    assert gradcheck(gating, [scores, probs])
    assert gradcheck(lambda s, p: (s * 1.0).scatter_(-1, torch.tensor(index), p), [scores, probs])  # into a node
    with pytest.raises(RuntimeError, match="scatter_: a leaf tensor that requires grad"):
        scores.scatter_(-1, torch.tensor(index), probs)


def rms_norm_numpy(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def test_rms_norm_matches_its_formula_and_passes_gradcheck_for_input_and_weight():
    x, w = f64(2, 3, 8), f64(8, seed=1)
    out = nn.functional.rms_norm(x, 8, w, eps=1e-5)
    np.testing.assert_allclose(out.data, rms_norm_numpy(x.data, w.data, 1e-5), rtol=1e-12)
    err = max_gradcheck_error(lambda a, b: nn.functional.rms_norm(a, 8, b, eps=1e-5), [x, w])
    print(f"\nRMSNorm: worst gradcheck error {err:.2e}")
    assert gradcheck(lambda a, b: nn.functional.rms_norm(a, 8, b, eps=1e-5), [x, w])
    norm = nn.RMSNorm(8, eps=1e-6)
    assert [n for n, _ in norm.named_parameters()] == ["weight"] and np.all(norm.weight.data == 1)
    y = norm(Tensor(x.data.astype(np.float32)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, rms_norm_numpy(x.data, 1.0, 1e-6), rtol=1e-6)
    eps32 = float(np.finfo(np.float32).eps)                               # eps=None: the dtype's epsilon
    np.testing.assert_allclose(nn.RMSNorm(8)(Tensor(x.data.astype(np.float32))).data,
                               rms_norm_numpy(x.data, 1.0, eps32), rtol=1e-6)


# ----------------------------------------------------------------------------- bf16 and meta parameters, assert_close
def test_bfloat16_layers_hold_bf16_values_in_float32_and_draw_as_many_words_as_float32():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8, dtype=torch.bfloat16)
    emb = nn.Embedding(10, 16, dtype=torch.bfloat16)
    after_bf16 = torch.rand(3).tolist()
    torch.manual_seed(1)
    lin32, emb32 = nn.Linear(16, 8), nn.Embedding(10, 16)
    assert torch.rand(3).tolist() == after_bf16                           # the stream moved alike
    for p, p32 in ((lin.weight, lin32.weight), (lin.bias, lin32.bias), (emb.weight, emb32.weight)):
        assert p.dtype == np.float32 and np.all((p.data.view(np.uint32) & 0xFFFF) == 0)
        np.testing.assert_array_equal(p.data, torch.bfloat16.round(p32.data))
    assert nn.RMSNorm(4, dtype=torch.bfloat16).weight.dtype == np.float32


def test_meta_device_layers_are_zeros_and_draw_nothing():
    torch.manual_seed(2)
    lin = nn.Linear(4, 3, bias=False, device=torch.device("meta"))
    first = torch.rand(2).tolist()
    torch.manual_seed(2)
    assert torch.rand(2).tolist() == first and not lin.weight.data.any()
    with pytest.raises(NotImplementedError, match="device 'cuda' is not available"):
        nn.Linear(4, 3, device="cuda")


def test_assert_close_and_allclose_use_torchs_tolerances():
    a = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(a, a + 1e-6)
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 2"):
        torch.testing.assert_close(a, torch.tensor([1.0, 2.001]))
    with pytest.raises(AssertionError, match="shape"):
        torch.testing.assert_close(a, torch.tensor([1.0]))
    torch.testing.assert_close(a, torch.tensor([1.0, 2.1]), rtol=0.0, atol=0.2)
    assert torch.allclose(a, a + 1e-6) and not torch.allclose(a, a + 1e-3)


def test_load_maps_the_file_copy_on_write(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "i": torch.tensor([7, 8])}, path)
    state = torch.load(path)
    assert list(state) == ["w", "i"] and state["i"].dtype == np.int64
    assert state["w"].tolist() == [[1, 2], [3, 4]] and type(state["w"].data) is np.ndarray
    state["w"].data[0, 0] = 9.0                                           # this process's copy only
    assert torch.load(path)["w"].tolist() == [[1, 2], [3, 4]]
    assert torch.load(path, mmap=False)["w"].tolist() == [[1, 2], [3, 4]]
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="cut.pth is not a safetensors file"):
        torch.load(tmp_path / "cut.pth")
