"""Reads PyTorch checkpoint files (`torch.save` of a state dict) without torch.

`read_checkpoint(path)` returns the tensors as NumPy arrays plus the plain
numbers saved beside them (e.g. `best_prec1`). Both serialisations are read:

* the zip format (torch >= 1.6, the default): one top folder holding
  `data.pkl` (the object pickle), `data/<key>` (raw storages) and optionally
  `byteorder` ("little" or "big"; little when absent);
* the legacy format (`_use_new_zipfile_serialization=False`, and every file
  written before torch 1.6): consecutive pickles of the magic number, the
  protocol version, a system-info dict, the object, and the list of storage
  keys, followed by each storage in that order as an 8-byte little-endian
  element count and the little-endian elements.

Safety: pickles are read by an unpickler that resolves only the few globals a
state dict needs (tensor and storage rebuilders, OrderedDict, dtypes, NumPy
scalars); the rebuilders are stand-ins defined here, so nothing from torch
runs and any other global (a pickled nn.Module, `os.system`) is refused
before anything is called.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_PREFIX = "module."  # added by (Distributed)DataParallel
_RESAVE = "save model.state_dict() with torch.save instead"

# torch dtype name -> NumPy type of its stored elements (bfloat16 as raw bits).
_DTYPES = {"float32": "f4", "float64": "f8", "float16": "f2",
           "bfloat16": "u2", "int64": "i8", "int32": "i4", "int16": "i2",
           "int8": "i1", "uint8": "u1", "bool": "?"}
_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16",
                  "long": "int64", "int": "int32", "short": "int16"}
_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64",
             "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
             "LongStorage": "int64", "IntStorage": "int32",
             "ShortStorage": "int16", "CharStorage": "int8",
             "ByteStorage": "uint8", "BoolStorage": "bool",
             "UntypedStorage": "uint8"}


class TorchFileError(ValueError):
  """A file that is not a readable PyTorch checkpoint (the message says why)."""


class _Problem(Exception):
  """Why a file cannot be read; read_checkpoint puts the path in front."""


class _DType:
  """A torch dtype or storage class, as it appears in a pickle."""

  def __init__(self, name: str):
    self.name = name
    self.numpy = np.dtype(_DTYPES[name])


class _Storage:
  """One storage: its element type, length and (once read) raw bytes."""

  def __init__(self, dtype: _DType, numel: int):
    self.dtype, self.numel = dtype, numel
    self.data: Any = None
    self.big_endian = False


class _View:
  """What a persistent id resolves to: a storage from element `start` on."""

  def __init__(self, storage: _Storage, start: int):
    self.storage, self.start = storage, start


class _Tensor:
  """A tensor to build once its storage's bytes are known."""

  def __init__(self, view: Any, offset: Any, shape: Any, strides: Any):
    if not isinstance(view, _View):
      raise _Problem("is malformed: a tensor is rebuilt from something that "
                     "is not a storage; save it again with torch.save")
    self.storage = view.storage
    self.offset, self.shape, self.strides = offset, shape, strides
    if isinstance(offset, int):
      self.offset = offset + view.start


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _Tensor:
  """Stands in for torch._utils._rebuild_tensor and _rebuild_tensor_v2."""
  del unused  # requires_grad, backward hooks, metadata
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused) -> Any:
  """Stands in for torch._utils._rebuild_parameter(_with_state)."""
  del unused
  return data


def _codecs_encode(text, encoding="latin1") -> bytes:
  """Stands in for _codecs.encode, which protocol 2 uses to pickle bytes."""
  if not isinstance(text, str) or encoding != "latin1":
    raise _Problem("is malformed: it encodes bytes in an unexpected way; "
                   "save it again with torch.save")
  return text.encode("latin1")


def _numpy_scalar(dtype, data=None) -> bool | int | float:
  """Stands in for numpy's scalar(): only plain numbers, as Python numbers."""
  if (not isinstance(dtype, np.dtype) or dtype.kind not in "biuf"
      or not isinstance(data, bytes) or len(data) != dtype.itemsize):
    raise _Problem("pickles a NumPy scalar that is not a plain number; "
                   "store such values as Python int, float or str")
  return np.frombuffer(data, dtype, count=1)[0].item()


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


def _find_global(module: str, name: str) -> Any:
  """The allowed stand-in for `module.name`; refuses everything else."""
  if (module, name) in _GLOBALS:
    return _GLOBALS[(module, name)]
  if module in ("torch", "torch.cuda", "torch.storage"):
    if name in _STORAGES:
      return _DType(_STORAGES[name])
    if module == "torch" and _DTYPE_ALIASES.get(name, name) in _DTYPES:
      return _DType(_DTYPE_ALIASES.get(name, name))
    if name.endswith("Storage"):
      raise _Problem(f"holds a tensor of the unsupported type {module}.{name}"
                     "; convert such tensors to float32 before saving")
  found = f"{module}.{name}"
  if not found.isprintable():
    found = ascii(found)
  raise _Problem(f"pickles {found}, which a state-dict reader refuses "
                 f"to load (nothing was executed); {_RESAVE}")


class _Unpickler(pickle.Unpickler):
  """Resolves only allowed globals; collects the storages that ids name."""

  def __init__(self, file: Any, storages: dict):
    super().__init__(file, encoding="utf-8")
    self._storages = storages

  def find_class(self, module: str, name: str) -> Any:
    return _find_global(module, name)

  def persistent_load(self, pid: Any) -> _View:
    """Zip ids: (storage, type, key, location, numel); legacy adds a view."""
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6)
        or pid[0] not in ("storage", b"storage")
        or not isinstance(pid[1], _DType) or not isinstance(pid[4], int)):
      raise _Problem(f"is malformed: unknown persistent id {pid!r:.80}; save "
                     "it again with torch.save")
    dtype, key, numel = pid[1], pid[2], pid[4]
    storage = self._storages.setdefault(key, _Storage(dtype, numel))
    if storage.dtype.name != dtype.name:
      raise _Problem(f"is malformed: storage {key} is used with two dtypes; "
                     "save it again with torch.save")
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return _View(storage, 0)
    if not (isinstance(view, tuple) and len(view) == 3
            and isinstance(view[1], int)):
      raise _Problem(f"is malformed: bad storage view {view!r:.80}; save it "
                     "again with torch.save")
    return _View(storage, view[1])


def _zip_prefix(zf: zipfile.ZipFile) -> str:
  """The single top folder ("archive/") holding data.pkl."""
  names = zf.namelist()
  pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
  if len(pickles) == 1:
    return pickles[0][:-len("data.pkl")]
  if pickles:
    raise _Problem(f"holds {len(pickles)} data.pkl files in one zip archive; "
                   "save each model to its own file with torch.save")
  if names and all(n.endswith(".npy") for n in names):
    raise _Problem("is a NumPy .npz archive, not a torch.save checkpoint; "
                   "load it with numpy.load")
  raise _Problem("is a zip archive without a data.pkl, not a torch.save "
                 "checkpoint; check that the path names the .pt/.pth file")


def _zip_big_endian(zf: zipfile.ZipFile, prefix: str) -> bool:
  """Whether the storages are big-endian (the `byteorder` record)."""
  if prefix + "byteorder" not in zf.namelist():
    return False
  order = zf.read(prefix + "byteorder").strip()
  if order not in (b"little", b"big"):
    raise _Problem(f"has an unknown byteorder record {order!r:.40}; save it "
                   "again with torch.save")
  return order == b"big"


def _read_zip(path: str) -> Any:
  """The unpickled object of a zip-format file, with storages filled in."""
  storages: dict = {}
  try:
    with zipfile.ZipFile(path) as zf:
      prefix = _zip_prefix(zf)
      obj = _load_pickle(io.BytesIO(zf.read(prefix + "data.pkl")), storages)
      big = _zip_big_endian(zf, prefix)
      for key, storage in storages.items():
        name = f"{prefix}data/{key}"
        if name not in zf.namelist():
          raise _Problem(f"is damaged: its zip archive lacks {name}; "
                         "download or save it again")
        storage.data, storage.big_endian = zf.read(name), big
  except _Problem:
    raise
  except Exception as e:  # zipfile raises many types for damaged archives
    raise _Problem("is a damaged or truncated zip archive "
                   f"({type(e).__name__}: {e}); download or save it "
                   "again") from None
  return obj


def _load_pickle(file: Any, storages: dict) -> Any:
  """One pickle from `file`; a damaged stream becomes a _Problem."""
  try:
    return _Unpickler(file, storages).load()
  except _Problem:
    raise
  except Exception as e:  # a damaged stream raises many types
    raise _Problem("is truncated or corrupt: its pickled data ends early or "
                   f"is malformed ({type(e).__name__}); download or save it "
                   "again") from None


def _read_legacy(data: bytes) -> Any:
  """The unpickled object of a legacy-format file, with storages filled in."""
  buf, storages = io.BytesIO(data), {}
  try:
    magic = _Unpickler(buf, storages).load()
  except _Problem:
    raise
  except Exception:  # not a pickle at all
    raise _Problem("is not a PyTorch checkpoint: it is neither a torch.save "
                   "zip archive nor a legacy torch.save pickle stream; check "
                   "that the path names a .pt/.pth/.th file") from None
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise _Problem(f"is a plain pickle of a {type(magic).__name__}, not a "
                   "torch.save checkpoint (no PyTorch magic number); "
                   f"{_RESAVE}")
  protocol = _load_pickle(buf, storages)
  if protocol != _LEGACY_PROTOCOL:
    raise _Problem(f"has the unknown legacy protocol {protocol!r:.40}; load "
                   "and re-save it with a current torch")
  _load_pickle(buf, storages)  # system info; storages are always little-endian
  obj = _load_pickle(buf, storages)
  keys = _load_pickle(buf, storages)
  if not isinstance(keys, list):
    raise _Problem("is corrupt: the storage key list is missing; download or "
                   "save it again")
  _fill_legacy_storages(data, buf.tell(), keys, storages)
  return obj


def _fill_legacy_storages(data: bytes, pos: int, keys: list,
                          storages: dict) -> None:
  """Points each storage at its bytes, which follow the pickles in order."""
  view = memoryview(data)
  for key in keys:
    storage = storages.get(key) if isinstance(key, (str, bytes)) else None
    if storage is None:
      raise _Problem(f"is corrupt: it stores data for {key!r:.40}, which no "
                     "tensor uses; download or save it again")
    if pos + 8 > len(data):
      raise _Problem(f"is truncated: the data of storage {key} is missing; "
                     "download or save it again")
    (count,) = struct.unpack_from("<q", data, pos)
    nbytes = count * storage.dtype.numpy.itemsize
    if count != storage.numel:
      raise _Problem(f"is corrupt: storage {key} has {count} elements where "
                     f"its tensors expect {storage.numel}; download or save "
                     "it again")
    if pos + 8 + nbytes > len(data):
      raise _Problem(f"is truncated: storage {key} needs {nbytes} bytes but "
                     f"only {len(data) - pos - 8} remain; download or save "
                     "it again")
    storage.data = view[pos + 8:pos + 8 + nbytes]
    pos += 8 + nbytes
  if any(s.data is None for s in storages.values()):
    raise _Problem("is corrupt: some storages have no data; download or save "
                   "it again")


def _to_numpy(tensor: _Tensor) -> np.ndarray:
  """A contiguous, native-order copy of `tensor` (bfloat16 as float32)."""
  storage, offset = tensor.storage, tensor.offset
  shape, strides = tensor.shape, tensor.strides
  dtype = storage.dtype.numpy.newbyteorder(">" if storage.big_endian else "<")
  if (not isinstance(shape, tuple) or not isinstance(strides, (tuple, list))
      or len(shape) != len(strides)
      or any(type(n) is not int or n < 0 for n in (offset, *shape, *strides))):
    raise _Problem("is malformed: a tensor has an invalid shape, stride or "
                   "offset; save it again with torch.save")
  if 0 in shape:
    out = np.zeros(shape, dtype.newbyteorder("="))
  else:
    available = len(storage.data) // dtype.itemsize
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= available:
      raise _Problem(f"is corrupt: a tensor of shape {shape} reaches past the "
                     "end of its storage; download or save it again")
    flat = np.frombuffer(storage.data, dtype, count=available)
    strided = np.lib.stride_tricks.as_strided(
        flat[offset:], shape, [s * dtype.itemsize for s in strides])
    out = np.array(strided, dtype=dtype.newbyteorder("="), order="C")
  if storage.dtype.name == "bfloat16":
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _scalar(value: Any) -> bool | int | float | str | None:
  """`value` as a JSON-able scalar (0-d tensors too), else None."""
  if isinstance(value, _Tensor) and value.shape == ():
    value = _to_numpy(value).item()
  if isinstance(value, (bool, int, float, str)):
    return value
  return None


def _describe(obj: Any) -> str:
  return "a single tensor" if isinstance(obj, _Tensor) else (
      f"a {type(obj).__name__}")


def _split(obj: Any) -> tuple[dict[str, np.ndarray], dict]:
  """(state_dict arrays, scalar extras) from the unpickled top-level object."""
  if not isinstance(obj, dict):
    raise _Problem(f"holds {_describe(obj)}, not a dict of tensors; save "
                   "model.state_dict() (alone or under 'state_dict')")
  wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)),
                 None)
  state = obj if wrapper is None else obj[wrapper]
  tensors = {k: v for k, v in state.items()
             if isinstance(k, str) and isinstance(v, _Tensor)}
  if not tensors:
    keys = ", ".join(repr(k) for k in list(state)[:6]) or "none"
    raise _Problem(f"holds no tensors (its keys: {keys}); {_RESAVE}")
  if all(k.startswith(_PREFIX) for k in tensors):
    tensors = {k[len(_PREFIX):]: v for k, v in tensors.items()}
  extras = {}
  if wrapper is not None:
    for key, value in obj.items():
      if key != wrapper and isinstance(key, str):
        if (value := _scalar(value)) is not None:
          extras[key] = value
  return {k: _to_numpy(v) for k, v in tensors.items()}, extras


def _read_file(path: str, size: int = -1) -> bytes:
  """The first `size` bytes (all with -1) of the file at `path`."""
  try:
    with open(path, "rb") as f:
      return f.read(size)
  except OSError as e:
    raise _Problem(f"cannot be read ({e.strerror or e}); check its "
                   "permissions") from None


def _load(path: str) -> Any:
  """The checked, unpickled top-level object of the file at `path`."""
  if not os.path.exists(path):
    raise _Problem(f"does not exist (looked from {os.getcwd()}); check the "
                   "path or download the checkpoint first")
  if os.path.isdir(path):
    raise _Problem("is a directory, not a checkpoint file; pass the path of "
                   "the .pt/.pth/.th file itself")
  head = _read_file(path, 512)
  if not head:
    raise _Problem("is empty (0 bytes), probably from an interrupted "
                   "download or save; fetch or save it again")
  if head.startswith(b"PK"):
    return _read_zip(path)
  if head[257:262] == b"ustar":
    raise _Problem("is in torch's oldest (tar-based) format, which this "
                   "reader does not support; load and re-save it with a "
                   "current torch")
  return _read_legacy(_read_file(path))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray],
                                                      dict]:
  """Reads the tensors of a PyTorch checkpoint without torch.

  Args:
    path: a file written by `torch.save` (zip or legacy format) holding a
      state dict, bare or in a dict under 'state_dict', 'model_state_dict',
      'model' or 'net' (the first of these whose value is a dict).

  Returns:
    (state_dict, extras). state_dict maps each tensor's key, without a
    'module.' prefix when every key has one, to a C-contiguous NumPy array of
    the tensor's dtype, except that bfloat16 comes back as float32 (exactly:
    NumPy has no bfloat16). Entries that are not tensors are skipped. extras
    holds the wrapper's other top-level entries that are bool, int, float or
    str (0-d tensors and NumPy scalars as Python numbers); others are dropped.

  Raises:
    TorchFileError: the file is missing, damaged, not a torch.save file, has
      no tensors, or pickles anything besides tensors, dicts and plain
      values (such as a whole nn.Module). Nothing from the file is executed.
  """
  path = os.fspath(path)
  try:
    return _split(_load(path))
  except _Problem as problem:
    raise TorchFileError(f"{path} {problem}.") from None
