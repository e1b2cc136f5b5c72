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
    weights_only=True is how every load here works (only tensors, no code runs).

    The tensors are the file's pages mapped copy-on-write, as PyTorch's torch.load(mmap=True),
    unless mmap=False (then a copy is read): loading a 1B-parameter state dict to copy it into a
    model (load_state_dict) costs no second 6 GB of memory. Writing into a loaded tensor changes
    this process's copy only, never the file. save() replaces a file by renaming a new one over
    it, so a mapping of the old file stays valid; a file cut short by another program while it
    is mapped is not."""
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
        arrays = safetensors.numpy.load_file(str(f)) if mmap is False else _mapped(f)
    except (SafetensorError, ValueError) as e:
        kind = "a pickle (zip) file from real PyTorch" if head[:2] == b"PK" else "not a safetensors file"
        raise ValueError(f"torch.load: {os.fspath(f)} is {kind}; {MAGIC_HINT} (no pickle), and only such "
                         f"files can be loaded ({e})") from None
    return OrderedDict((name, Tensor(array)) for name, array in _ordered(f, arrays))


_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def _mapped(f):
    """name -> array over the safetensors file's data, mapped copy-on-write (mode "c"). The
    layout: 8 bytes (little-endian header length n), n bytes of JSON {name: {dtype, shape,
    data_offsets}}, then the data; offsets are checked against the file's size."""
    size = os.path.getsize(f)
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n <= size - 8:
            raise ValueError(f"header length {n} does not fit a file of {size} bytes")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    header.pop("__metadata__", None)
    data = np.memmap(f, dtype=np.uint8, mode="c", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    arrays = {}
    for name, entry in header.items():
        dtype = np.dtype(_DTYPES[entry["dtype"]]) if entry.get("dtype") in _DTYPES else None
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if dtype is None or not 0 <= begin <= end <= data.size or end - begin != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"tensor {name!r}: dtype {entry.get('dtype')}, shape {shape} and offsets "
                             f"{begin}..{end} do not fit the file")
        arrays[name] = data[begin:end].view(np.ndarray).view(dtype).reshape(shape)
    return arrays


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
