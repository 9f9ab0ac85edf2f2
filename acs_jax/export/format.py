"""The export file: one uncompressed .npz of the arrays and a JSON manifest.

Readable with NumPy alone (no acs_jax, no JAX):

    f = np.load("student.npz")                       # allow_pickle stays False
    manifest = json.loads(f["manifest"].tobytes())   # UTF-8 JSON
    codes = unpack_codes(f["stage1_block1/QConv_0/kernel_codes"], bits, n)

Entries: "manifest" (uint8, the JSON text) and one entry per tensor, named
"<flax module path>/<leaf>" (e.g. "stem_bn/scale", "head/kernel",
"stage1_block1/QConv_0/kernel_codes"). manifest["arrays"] lists every tensor
entry with its dtype and shape; docs/export.md describes every field.

Packing of the weight codes (`pack_codes`): each code is a `bits`-bit two's
complement field; the fields of the flattened (C-order) kernel form one
little-endian bit stream, code i in stream bits [i*bits, (i+1)*bits), least
significant bit first; stream bit k is bit (k % 8) of byte k // 8 (so at 2 bits
a byte holds 4 codes, at 4 bits 2 codes, at 8 bits it is the int8 code
itself). The last byte is padded with zero bits. Size: ceil(n * bits / 8).

Everything here is NumPy: writing is "next to the target, then linked into
place", so a file either appears complete or not at all, and an existing file
is never replaced.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Any

import numpy as np

FORMAT = "acs_jax.export"
FORMAT_VERSION = 1
MANIFEST_KEY = "manifest"
PACK_BITS = (2, 3, 4, 5, 6, 7, 8)
FLOAT_DTYPE = "float32"


class ExportError(ValueError):
  """A run cannot be exported, or an export file is unusable."""


# ---------------------------------------------------------------------------
# Packing.


def qrange(bits: int, signed: bool) -> tuple[int, int]:
  """(Qn, Qp) of a `bits`-bit integer code (the same as LSQ's)."""
  if signed:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


def packed_size(count: int, bits: int) -> int:
  """Bytes that `count` packed codes of `bits` bits take."""
  return math.ceil(count * bits / 8)


def _check_bits(bits: int) -> None:
  if bits not in PACK_BITS:
    raise ExportError(f"weight bit width {bits!r} cannot be packed; valid "
                      f"values: {', '.join(map(str, PACK_BITS))}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
  """Signed integer codes (any shape, in [Qn, Qp]) -> packed uint8 [bytes]."""
  _check_bits(bits)
  codes = np.asarray(codes).reshape(-1)
  qn, qp = qrange(bits, True)
  if codes.size and (codes.min() < qn or codes.max() > qp):
    raise ExportError(f"codes outside the {bits}-bit range [{qn}, {qp}]: "
                      f"min {codes.min()}, max {codes.max()}")
  fields = (codes.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint8)
  stream = np.unpackbits(fields[:, None], axis=1, bitorder="little")[:, :bits]
  return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
  """Packed uint8 bytes -> the `count` signed codes, int8 [count]."""
  _check_bits(bits)
  packed = np.asarray(packed)
  if packed.dtype != np.uint8 or packed.ndim != 1:
    raise ExportError(f"packed codes must be a 1-D uint8 array, got "
                      f"{packed.dtype} {packed.shape}")
  if packed.size != packed_size(count, bits):
    raise ExportError(f"{packed.size} packed bytes cannot hold {count} codes "
                      f"of {bits} bits (expected {packed_size(count, bits)})")
  stream = np.unpackbits(packed, bitorder="little")
  fields = stream[:count * bits].reshape(count, bits).astype(np.int16)
  values = fields @ (1 << np.arange(bits, dtype=np.int16))
  values = np.where(values >= 2 ** (bits - 1), values - 2 ** bits, values)
  return values.astype(np.int8)


def padding_bits_are_zero(packed: np.ndarray, bits: int, count: int) -> bool:
  stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")
  return not stream[count * bits:].any()


# ---------------------------------------------------------------------------
# Writing.


def _manifest_bytes(manifest: dict) -> np.ndarray:
  text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
  return np.frombuffer(text.encode("utf-8"), np.uint8)


def array_table(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
  return {k: {"dtype": str(v.dtype), "shape": list(v.shape)}
          for k, v in arrays.items()}


def check_out_path(path: str, flag: str = "--out") -> str:
  """The absolute target path; refuses one that exists or has no parent."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.lexists(path):
    raise ExportError(f"{flag}={path!r} already exists; refusing to "
                      "overwrite it (choose a new file name)")
  if not os.path.isdir(os.path.dirname(path)):
    raise ExportError(f"{flag}={path!r}: its folder "
                      f"{os.path.dirname(path)} does not exist")
  return path


def write_export(path: str, manifest: dict, arrays: dict[str, np.ndarray]
                 ) -> str:
  """Writes the export file `path` (never replacing an existing file).

  The file is written beside `path` and hard-linked into place (atomic, and
  failing if `path` appeared meanwhile), so a reader never sees half a file.

  Returns:
    The absolute path written.
  """
  path = check_out_path(path)
  if MANIFEST_KEY in arrays:
    raise ExportError(f"an array may not be called {MANIFEST_KEY!r}")
  manifest = {**manifest, "arrays": array_table(arrays)}
  tmp = f"{path}.partial-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **{MANIFEST_KEY: _manifest_bytes(manifest)}, **arrays)
    try:
      os.link(tmp, path)
    except FileExistsError:
      raise ExportError(f"--out={path!r} appeared while it was being "
                        "written; refusing to overwrite it") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def sizes(manifest: dict, arrays: dict[str, np.ndarray]) -> dict[str, int]:
  """Bytes of the tensor payload, of its packed codes, and of the same model
  with every tensor float32 (quantized kernels at 4 bytes a weight, step
  sizes left out)."""
  layers = manifest["layers"].values()
  codes = {l["weight"]["codes_array"] for l in layers if l["weight"]}
  steps = {q["step_array"] for q in manifest["act_quant"].values()} | {
      l["weight"]["step_array"] for l in layers if l["weight"]}
  floats = sum(a.size for k, a in arrays.items()
               if k not in codes and k not in steps)
  weights = sum(l["weight"]["count"] for l in layers if l["weight"])
  return {"arrays_bytes": int(sum(a.nbytes for a in arrays.values())),
          "codes_bytes": int(sum(arrays[k].nbytes for k in codes)),
          "fp32_bytes": int(4 * (floats + weights))}


# ---------------------------------------------------------------------------
# Reading and validation.


def _load_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}  # reads (and CRC-checks) every entry
  except (zipfile.BadZipFile, ValueError, OSError, EOFError,
          KeyError) as e:
    raise ExportError(
        f"{path} is not a readable export file (truncated or corrupt: "
        f"{type(e).__name__}: {e}); export the run again") from None


def read_export(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(manifest, arrays) of an export file, validated (ExportError if not)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise ExportError(f"{path}: no such export file")
  data = _load_npz(path)
  if MANIFEST_KEY not in data:
    raise ExportError(f"{path} has no {MANIFEST_KEY!r} entry: it is an .npz "
                      "file, but not an acs_jax export")
  raw = data.pop(MANIFEST_KEY)
  try:
    manifest = json.loads(raw.tobytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportError(f"{path}: its manifest is not valid JSON ({e})") from None
  try:
    validate(manifest, data, where=path)
  except (KeyError, TypeError, AttributeError, IndexError) as e:
    raise ExportError(f"{path}: the manifest is malformed ({type(e).__name__}:"
                      f" {e}); the file is damaged or was not written by "
                      "acs_jax.export") from None
  return manifest, data


def _fail(where: str, what: str) -> None:
  raise ExportError(f"{where}: {what}; the file is damaged or was not "
                    "written by this version of acs_jax.export")


def validate(manifest: Any, arrays: dict[str, np.ndarray], where: str) -> None:
  """Checks the manifest's format, its array table and every layer entry."""
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    _fail(where, f"manifest field 'format' is "
          f"{manifest.get('format') if isinstance(manifest, dict) else None!r}"
          f", expected {FORMAT!r}")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise ExportError(f"{where}: manifest format_version={version!r}; this "
                      f"reader supports version {FORMAT_VERSION} only")
  for key in ("model", "input", "layers", "act_quant", "arrays", "blocks"):
    if key not in manifest:
      _fail(where, f"the manifest has no {key!r} field")
  table = manifest["arrays"]
  missing = sorted(set(table) - set(arrays))
  extra = sorted(set(arrays) - set(table))
  if missing or extra:
    _fail(where, "arrays " + "; ".join(
        f"{what}: {', '.join(names[:4])}"
        + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        for what, names in (("missing", missing), ("not in the manifest",
                                                   extra)) if names))
  for name, spec in table.items():
    a = arrays[name]
    if str(a.dtype) != spec.get("dtype") or list(a.shape) != spec.get("shape"):
      _fail(where, f"array {name!r} is {a.dtype} {list(a.shape)}, the manifest "
            f"says {spec.get('dtype')} {spec.get('shape')}")
  for name, q in manifest["act_quant"].items():
    _check_quantizer(where, name, q, arrays, signed=q.get("signed"))
  for name, layer in manifest["layers"].items():
    _check_layer(where, name, layer, manifest, arrays)


def _check_quantizer(where, name, q, arrays, signed) -> None:
  bits = q.get("bits")
  if bits not in PACK_BITS or not isinstance(signed, bool):
    _fail(where, f"quantizer {name!r} has bits={bits!r}, signed={signed!r}")
  if [q.get("qn"), q.get("qp")] != list(qrange(bits, signed)):
    _fail(where, f"quantizer {name!r}: [qn, qp]=[{q.get('qn')}, "
          f"{q.get('qp')}] is not the {bits}-bit range {qrange(bits, signed)}")
  step = arrays.get(q.get("step_array"))
  if step is None or step.dtype != np.float32:
    _fail(where, f"quantizer {name!r}: step array {q.get('step_array')!r} "
          "missing or not float32")
  if not (np.all(np.isfinite(step)) and np.all(step > 0)):
    _fail(where, f"quantizer {name!r}: step sizes must be finite and > 0")
  if not np.array_equal(np.asarray(q.get("step"), np.float32), step):
    _fail(where, f"quantizer {name!r}: the manifest's step differs from "
          f"array {q['step_array']!r}")


def _check_layer(where, name, layer, manifest, arrays) -> None:
  shape = layer.get("kernel_shape")
  if not isinstance(shape, list) or layer.get("kind") not in ("conv", "dense"):
    _fail(where, f"layer {name!r} has no valid kind/kernel_shape")
  aq = layer.get("input_quant")
  if aq is not None and aq not in manifest["act_quant"]:
    _fail(where, f"layer {name!r}: input quantizer {aq!r} is not in act_quant")
  w = layer.get("weight")
  if w is None:
    kernel = arrays.get(layer.get("kernel_array"))
    if kernel is None or list(kernel.shape) != shape:
      _fail(where, f"layer {name!r}: float kernel "
            f"{layer.get('kernel_array')!r} missing or not of shape {shape}")
  else:
    if w.get("signed") is not True:
      _fail(where, f"layer {name!r}: weight codes must be signed")
    _check_quantizer(where, name, w, arrays, signed=True)
    count = int(np.prod(shape))
    packed = arrays.get(w.get("codes_array"))
    if (packed is None or w.get("count") != count
        or list(packed.shape) != [packed_size(count, w["bits"])]):
      _fail(where, f"layer {name!r}: packed codes {w.get('codes_array')!r} "
            f"missing or not {packed_size(count, w['bits'])} bytes for "
            f"{count} codes of {w['bits']} bits")
    if not padding_bits_are_zero(packed, w["bits"], count):
      _fail(where, f"layer {name!r}: the padding bits of the packed codes "
            "are not zero")
    step_shape = [shape[-1]] if w.get("per_channel") else []
    if list(arrays[w["step_array"]].shape) != step_shape:
      _fail(where, f"layer {name!r}: weight step shape "
            f"{list(arrays[w['step_array']].shape)}, expected {step_shape}")
  if layer.get("bias") and layer.get("bias_array") not in arrays:
    _fail(where, f"layer {name!r}: bias array {layer.get('bias_array')!r} "
          "missing")
