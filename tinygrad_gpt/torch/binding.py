"""Bind `import torch` (and `tiktoken.get_encoding("gpt2")`) to the shim, for a while.

Nothing here runs at `import tinygrad_gpt` or `import tinygrad_gpt.torch`: the names in
sys.modules change only inside `with bound():`, which `python -m tinygrad_gpt.torch` uses to
run a script, and which `load_book_module` uses to import the book's package afresh, so that
real PyTorch and the book's code on the engine can live in one process (the tests do that).
"""
import contextlib
import importlib
import sys
import types


def shim_modules():
    """The sys.modules entries a script's `import torch...` should find."""
    import tinygrad_gpt.torch as shim
    return {"torch": shim, "torch.nn": shim.nn, "torch.nn.functional": shim.nn.functional,
            "torch.nn.init": shim.nn.init, "torch.nn.utils": shim.nn.utils,
            "torch.optim": shim.optim, "torch.testing": shim.testing, "torch.utils": shim.utils, "torch.utils.data": shim.utils.data,
            "tiktoken": offline_tiktoken()}


def offline_tiktoken():
    """The tiktoken module, except that get_encoding("gpt2") is the project's offline encoding
    (tinygrad_gpt/tokenizer.py builds the same Encoding from local files: no download)."""
    import tiktoken
    from ..tokenizer import get_gpt2_tokenizer
    proxy = types.ModuleType("tiktoken", "tiktoken, with get_encoding('gpt2') built offline (tinygrad_gpt)")
    proxy.__dict__.update({k: v for k, v in vars(tiktoken).items() if not k.startswith("__")})

    def get_encoding(encoding_name):
        return get_gpt2_tokenizer() if encoding_name == "gpt2" else tiktoken.get_encoding(encoding_name)

    proxy.get_encoding = get_encoding
    return proxy


_ABSENT = object()


@contextlib.contextmanager
def bound():
    """Inside: `import torch` gives tinygrad_gpt.torch (and its nn, nn.functional, optim,
    utils.data), `import tiktoken` the offline one. After: sys.modules as it was."""
    entries = shim_modules()
    saved = {name: sys.modules.get(name, _ABSENT) for name in entries}
    sys.modules.update(entries)
    try:
        yield entries["torch"]
    finally:
        for name, module in saved.items():
            if module is _ABSENT:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


BOOK_PACKAGE = "llms_from_scratch"


def load_book_modules(*names):
    """Fresh imports of the book's modules (e.g. "llms_from_scratch.ch04", or just "ch04"),
    with their `import torch` bound to the shim: their GPTModel runs on the engine. Imported
    together, so ch05's `from .ch04 import ...` is the same ch04 returned here. The book's
    modules already imported with real torch are untouched and put back afterwards."""
    names = [n if n.startswith(BOOK_PACKAGE + ".") else f"{BOOK_PACKAGE}.{n}" for n in names]
    package = importlib.import_module(BOOK_PACKAGE)            # the package itself imports no torch
    prefix = BOOK_PACKAGE + "."
    before = {k: v for k, v in sys.modules.items() if k.startswith(prefix)}
    for k in before:
        del sys.modules[k]                                     # so `from .ch04 import` is fresh too
    try:
        with bound():
            modules = [importlib.import_module(n) for n in names]
    finally:
        for k in [k for k in sys.modules if k.startswith(prefix)]:
            del sys.modules[k]
        sys.modules.update(before)
        for k, v in before.items():                            # the package's attributes too
            if k.count(".") == 1:
                setattr(package, k.split(".")[1], v)
    return modules


def load_book_module(name):
    """One module of the book's package on the shim (see load_book_modules)."""
    return load_book_modules(name)[0]
