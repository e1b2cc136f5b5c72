"""torch.save / torch.load for state dicts, written as safetensors: no pickle, ever.

    torch.save(model.state_dict(), "review_classifier.pth")
    model.load_state_dict(torch.load("review_classifier.pth", weights_only=True))

The file is safetensors whatever its name says (".pth" included): loading it runs no code,
and `safetensors.numpy.load_file(path)` (or Hugging Face's tools) read it too. Real
PyTorch cannot torch.load it (it expects a pickle); use safetensors.torch.load_file there.
What torch.save can hold beyond a flat dict of tensors (nested dicts, optimizer states,
arbitrary objects) needs pickle and is outside this surface.
"""
import json
import os
from collections import OrderedDict

import numpy as np

from ..fileio import atomic_replace
from ..tensor import Tensor
from .semantics import MissingFeature, check_device

MAGIC_HINT = "a file written by torch.save here is safetensors"


def _arrays(obj):
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise MissingFeature(f"torch.save: only a dict of name -> tensor (a state_dict) can be saved here, "
                             f"as safetensors (no pickle); got {type(obj).__name__}")
    arrays = {}
    for name, value in obj.items():
        if isinstance(value, Tensor):
            value = value.data
        if not isinstance(value, np.ndarray):
            raise MissingFeature(f"torch.save: {name!r} is a {type(value).__name__}; only tensors can be saved "
                                 f"here, as safetensors (no pickle)")
        arrays[name] = np.ascontiguousarray(value)
    return arrays


def save(obj, f, pickle_module=None, pickle_protocol=None, _use_new_zipfile_serialization=True):
    """Write a state_dict to the path f as safetensors, atomically (a crash leaves the old
    file or the new one, never half of one)."""
    if pickle_module is not None or pickle_protocol is not None:
        raise MissingFeature("torch.save(pickle_module=..., pickle_protocol=...): nothing is pickled here")
    if not isinstance(f, (str, os.PathLike)):
        raise MissingFeature("torch.save: only a file path is implemented (not a file object)")
    import safetensors.numpy
    arrays = _arrays(obj)
    with atomic_replace(f) as tmp:
        safetensors.numpy.save_file(arrays, str(tmp), metadata={"format": "np", "order": json.dumps(list(arrays))})


def load(f, map_location=None, pickle_module=None, weights_only=None, mmap=None):
    """Read a file save() wrote: an OrderedDict name -> Tensor, in the saved order.
    weights_only=True is how every load here works (only tensors, no code runs)."""
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        check_device(map_location, "torch.load(map_location=...)")
    if pickle_module is not None:
        raise MissingFeature("torch.load(pickle_module=...): nothing is unpickled here")
    if not isinstance(f, (str, os.PathLike)):
        raise MissingFeature("torch.load: only a file path is implemented (not a file object)")
    import safetensors.numpy
    from safetensors import SafetensorError
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
        arrays = safetensors.numpy.load_file(str(f))
    except (SafetensorError, ValueError) as e:
        kind = "a pickle (zip) file from real PyTorch" if head[:2] == b"PK" else "not a safetensors file"
        raise ValueError(f"torch.load: {os.fspath(f)} is {kind}; {MAGIC_HINT} (no pickle), and only such "
                         f"files can be loaded ({e})") from None
    return OrderedDict((name, Tensor(array)) for name, array in _ordered(f, arrays))


def _ordered(f, arrays):
    """The saved order (the state_dict's), kept in the file's metadata; sorted names otherwise."""
    from safetensors import safe_open
    with safe_open(str(f), framework="np") as fh:
        meta = fh.metadata() or {}
    try:
        names = json.loads(meta.get("order", "[]"))
    except ValueError:
        names = []
    if sorted(names) != sorted(arrays):
        names = sorted(arrays)
    return [(n, arrays[n]) for n in names]
