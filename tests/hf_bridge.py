"""Hugging Face transformers on real PyTorch beside the shim, for the book's two tests that
compare its Llama 3.2 and Qwen3 with transformers' (test_llama3 / test_qwen3's
test_*_base_equivalence_with_transformers), when the book's suite runs on the engine.

transformers is a PyTorch library: under `python -m tinygrad_gpt.torch` every `import torch`
is the shim, and transformers cannot run on it. So book_suite.py, on the engine, calls
`install()`: real PyTorch and transformers' Llama and Qwen3 packages are imported with `torch`
bound to real PyTorch for that moment, and `transformers.models.llama` / `.qwen3` in
sys.modules become small modules whose four names run transformers with real PyTorch bound
again (its functions import torch as they run) and take and give the shim's values at the door:

- LlamaConfig / Qwen3Config(**kwargs): a dtype the shim names (torch.float32 is NumPy's float32
  there) becomes real PyTorch's;
- LlamaForCausalLM / Qwen3ForCausalLM(config): the real model; model(input_ids) takes the
  shim's int64 tensor (as a real one) and returns its logits as a shim tensor; state_dict() is
  the real one (the book's load_weights_into_* copy it with torch.tensor(array)).

So those two tests compare the book's model computed by the engine with transformers' computed
by PyTorch, in one process; nothing of transformers or PyTorch is changed.
"""
import contextlib
import importlib
import sys
import types

import numpy as np

MODELS = {"transformers.models.llama": ("LlamaConfig", "LlamaForCausalLM"),
          "transformers.models.qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}


def _torch_entries():
    return {k: v for k, v in sys.modules.items() if k == "torch" or k.startswith("torch.")}


@contextlib.contextmanager
def _swapped(entries):
    """sys.modules' torch entries are `entries` inside, what they were after."""
    before = _torch_entries()
    for k in before:
        del sys.modules[k]
    sys.modules.update(entries)
    try:
        yield
    finally:
        for k in _torch_entries():
            del sys.modules[k]
        sys.modules.update(before)


def install():
    """Bind the two bridged modules (see the module's docstring). Call with the shim bound."""
    from tinygrad_gpt.tensor import Tensor
    real_entries = {}
    with _swapped({}):                                   # no torch at all: the import finds real PyTorch
        real = importlib.import_module("torch")
        classes = {name: [getattr(importlib.import_module(name), n) for n in names]   # lazy: import them now
                   for name, names in MODELS.items()}
        real_entries.update(_torch_entries())            # with what torch imported meanwhile

    def on_real_torch(fn, *args, **kwargs):
        with _swapped(real_entries):
            out = fn(*args, **kwargs)
        real_entries.update({k: v for k, v in sys.modules.items() if k.startswith("torch.")})
        return out

    def real_value(v):
        if isinstance(v, np.dtype):                       # the shim's dtypes are NumPy's
            return getattr(real, v.name)
        return real.from_numpy(np.ascontiguousarray(v.data)) if isinstance(v, Tensor) else v

    class Bridged:
        """A real transformers model, called with the shim's tensors."""

        def __init__(self, model):
            self.model = model

        def state_dict(self):
            return on_real_torch(self.model.state_dict)

        def __call__(self, input_ids, **kwargs):
            def run():
                with real.inference_mode():
                    return self.model(real_value(input_ids), **{k: real_value(v) for k, v in kwargs.items()})
            return types.SimpleNamespace(logits=Tensor(on_real_torch(run).logits.numpy().copy()))

    for name, (config_name, model_name) in MODELS.items():
        bridged = types.ModuleType(name, f"{name} on real PyTorch, called with tinygrad_gpt.torch's values "
                                         f"(tests/hf_bridge.py)")
        real_config, real_model = classes[name]
        setattr(bridged, config_name, lambda _cls=real_config, **kw: on_real_torch(
            _cls, **{k: real_value(v) for k, v in kw.items()}))
        setattr(bridged, model_name, lambda config, _cls=real_model: Bridged(on_real_torch(_cls, config)))
        sys.modules[name] = bridged
