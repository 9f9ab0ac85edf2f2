"""A trained student's Flax variables -> the export's (manifest, arrays).

`export_variables(model, variables, ...)` traces one eval-mode forward of the
Flax model with method interceptors, recording every ActQuant, QConv, QDense
and BatchNorm call: its module path and attributes (bits, signedness, kernel
shape, strides, padding, groups, bias, epsilon) and which activation quantizer
feeds which quantized layer (the quantizer's output object is the layer's
input). So the manifest states what the model computes, not what this module
assumes it computes.

Weight codes are computed with the very operations of `lsq_quantize`
(clip(round(kernel / step), Qn, Qp) in float32), so `codes * step` is the
fake-quantized kernel bit for bit.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acs_jax.export import format as fmt
from acs_jax.export import int_forward
from acs_jax.models import mobilenetv2 as mbv2
from acs_jax.models.resnet import ResNet
from acs_jax.quant import ActQuant, QConv, QDense, is_quantized

FAMILIES = ("resnet", "mobilenetv2")


def family(model: nn.Module) -> str:
  if isinstance(model, ResNet):
    return "resnet"
  if isinstance(model, mbv2.MobileNetV2):
    return "mobilenetv2"
  raise fmt.ExportError(f"a {type(model).__name__} cannot be exported; "
                        f"supported model families: {', '.join(FAMILIES)}")


def _padding(padding: Any, kernel_size) -> list[list[int]]:
  if padding is None:
    return [[k // 2, k // 2] for k in kernel_size]
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [[0, 0] for _ in kernel_size]
    raise fmt.ExportError(f"conv padding {padding!r} is not supported by the "
                          "export (explicit, None or 'VALID' only)")
  return [[int(a), int(b)] for a, b in padding]


def trace_layers(model: nn.Module, variables: dict, image_shape
                 ) -> tuple[list[dict], dict[str, float]]:
  """(recorded layer calls in forward order, {BatchNorm path: epsilon})."""
  calls: list[dict] = []
  quant_out: dict[int, tuple[str, Any]] = {}
  batch_norms: dict[str, float] = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != "__call__" or not isinstance(
        mod, (ActQuant, QConv, QDense, nn.BatchNorm)):
      return next_fun(*args, **kwargs)
    x = args[0]
    path = "/".join(mod.path)
    out = next_fun(*args, **kwargs)
    if isinstance(mod, nn.BatchNorm):
      if not mod.use_running_average or not (mod.use_scale and mod.use_bias):
        raise fmt.ExportError(f"BatchNorm {path} is not a plain eval-mode "
                              "BatchNorm with scale and bias")
      batch_norms[path] = float(mod.epsilon)
      return out
    if isinstance(mod, ActQuant):
      if is_quantized(mod.bits):
        calls.append({"type": "act", "path": path, "bits": int(mod.bits),
                      "signed": bool(mod.signed)})
        quant_out[id(out)] = (path, out)  # the reference keeps the id unique
      return out
    source = quant_out.get(id(x))
    input_quant = source[0] if source is not None and source[1] is x else None
    rec = {"type": "layer", "path": path, "input_quant": input_quant,
           "weight_bits": int(mod.weight_bits),
           "per_channel": bool(mod.per_channel),
           "bias": bool(mod.use_bias)}
    if isinstance(mod, QConv):
      rec.update(kind="conv", strides=[int(s) for s in mod.strides],
                 padding=_padding(mod.padding, mod.kernel_size),
                 groups=int(mod.feature_group_count))
    else:
      rec.update(kind="dense")
    calls.append(rec)
    return out

  x = jnp.zeros((1, *image_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return calls, batch_norms


def _weight_codes(kernel, step, bits: int):
  """LSQ's clip(round(kernel / step), Qn, Qp), as in lsq_quantize."""
  qn, qp = fmt.qrange(bits, True)
  return jnp.clip(jnp.round(kernel / jnp.asarray(step, jnp.float32)), qn,
                  qp).astype(jnp.int8)


def _all_weight_codes(quantized: dict) -> dict[str, np.ndarray]:
  """int8 codes of every {path: (kernel, step, bits)}, in one jitted call."""
  bits = {p: b for p, (_, _, b) in quantized.items()}
  fn = jax.jit(lambda k, s: {p: _weight_codes(k[p], s[p], bits[p]) for p in k})
  out = fn({p: k for p, (k, _, _) in quantized.items()},
           {p: s for p, (_, s, _) in quantized.items()})
  return {p: np.asarray(v) for p, v in out.items()}


def _step_value(step: np.ndarray) -> float | list[float]:
  return float(step) if step.ndim == 0 else [float(s) for s in step]


def _blocks(model: nn.Module, fam: str) -> list[dict]:
  """The residual blocks in order, with what the forward needs of each."""
  out = []
  if fam == "resnet":
    channels = model.widths[0]
    for i, (n, width) in enumerate(zip(model.stage_sizes, model.widths)):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        same = strides == 1 and channels == width
        out.append({"name": f"stage{i + 1}_block{j + 1}", "kind": model.block,
                    "in": channels, "out": width, "stride": strides,
                    "shortcut": "identity" if same else model.shortcut})
        channels = width
    return out
  w = model.width_mult
  divisor = 4 if w == 0.1 else 8
  channels = mbv2.make_divisible(32 * w, divisor)
  for i, (t, c, n, s) in enumerate(mbv2.CIFAR_CFG):
    width = mbv2.make_divisible(c * w, divisor)
    for j in range(n):
      strides = s if j == 0 else 1
      out.append({"name": f"stage{i + 1}_block{j + 1}",
                  "kind": "inverted_residual", "in": channels, "out": width,
                  "stride": strides, "expand_ratio": t,
                  "residual": strides == 1 and channels == width})
      channels = width
  return out


def model_description(model: nn.Module, name: str, image_shape) -> dict:
  fam = family(model)
  desc = {"family": fam, "name": name, "num_classes": int(model.num_classes),
          "image_shape": [int(d) for d in image_shape],
          "dtype": jnp.dtype(model.dtype).name}
  if fam == "resnet":
    desc.update(block=model.block, stem=model.stem, shortcut=model.shortcut,
                stage_sizes=list(model.stage_sizes),
                widths=list(model.widths))
  else:
    desc.update(width_mult=float(model.width_mult),
                dropout=float(model.dropout))
  return desc


def export_variables(model: nn.Module, variables: dict, *, name: str,
                     image_shape, input_info: dict, quant_info: dict,
                     source: dict) -> tuple[dict, dict[str, np.ndarray]]:
  """The manifest (without its array table) and the arrays of the export.

  Args:
    model: the student's Flax module (a ResNet or MobileNetV2).
    variables: {"params", "batch_stats"} of the trained student.
    name: the model's zoo name (e.g. "resnet_tiny").
    image_shape: (H, W, C) of the inputs.
    input_info: {"mean", "std", "normalization"} of the inputs.
    quant_info: the run's quantization settings (for the record).
    source: where the weights come from (run, checkpoint, epoch, accuracy).
  """
  fam = family(model)
  variables = jax.tree.map(np.asarray, flax.core.unfreeze(
      {"params": variables["params"],
       "batch_stats": variables.get("batch_stats", {})}))
  calls, batch_norms = trace_layers(model, variables, image_shape)
  flat = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(
      {**variables["params"]}).items()}
  stats = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(
      {**variables["batch_stats"]}).items()}
  arrays: dict[str, np.ndarray] = {}
  consumed: set[str] = set()
  act_quant, layers = {}, {}
  quantized = {}  # path -> (kernel, step, bits) of the weight-quantized
  for c in calls:
    path = c["path"]
    if c["type"] == "act":
      step = np.asarray(flat[f"{path}/step"], np.float32)
      qn, qp = fmt.qrange(c["bits"], c["signed"])
      act_quant[path] = {"bits": c["bits"], "signed": c["signed"], "qn": qn,
                         "qp": qp, "step": _step_value(step),
                         "value_range": [qn * float(step), qp * float(step)],
                         "step_array": f"{path}/step"}
      arrays[f"{path}/step"] = step
      consumed.add(f"{path}/step")
      continue
    kernel = np.asarray(flat[f"{path}/kernel"], np.float32)
    layer = {k: c[k] for k in ("kind", "strides", "padding", "groups")
             if k in c}
    layer.update(kernel_shape=list(kernel.shape),
                 input_quant=c["input_quant"], bias=c["bias"],
                 bias_array=f"{path}/bias" if c["bias"] else None,
                 weight=None, kernel_array=f"{path}/kernel")
    if is_quantized(c["weight_bits"]):
      step = np.asarray(flat[f"{path}/w_step"], np.float32)
      quantized[path] = (kernel, step, c["weight_bits"])
      consumed.update({f"{path}/kernel", f"{path}/w_step"})
    layers[path] = layer
  codes = _all_weight_codes(quantized)
  for path, (kernel, step, bits) in quantized.items():
    qn, qp = fmt.qrange(bits, True)
    arrays[f"{path}/kernel_codes"] = fmt.pack_codes(codes[path], bits)
    arrays[f"{path}/w_step"] = step
    layers[path]["kernel_array"] = None
    layers[path]["weight"] = {
        "bits": bits, "signed": True, "qn": qn, "qp": qp,
        "per_channel": step.ndim == 1, "step": _step_value(step),
        "step_array": f"{path}/w_step",
        "codes_array": f"{path}/kernel_codes", "count": int(kernel.size),
        "packed_shape": list(arrays[f"{path}/kernel_codes"].shape)}
  for key, value in {**flat, **stats}.items():
    if key.endswith("step") and key not in consumed:
      raise fmt.ExportError(f"step size {key} belongs to no quantizer that "
                            "the forward pass uses")
    if key not in consumed:
      arrays[key] = np.asarray(value, np.float32)
  eps = set(batch_norms.values())
  if len(eps) > 1:
    raise fmt.ExportError(f"BatchNorm epsilons differ ({sorted(eps)}); the "
                          "export records one")
  manifest = {
      "format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION,
      "model": model_description(model, name, image_shape),
      "input": dict(input_info), "quant": dict(quant_info),
      "source": dict(source),
      "batch_norm_epsilon": eps.pop() if eps else None,
      "blocks": _blocks(model, fam), "layers": layers,
      "act_quant": act_quant}
  manifest["sizes"] = fmt.sizes(manifest, arrays)
  check_forward(manifest, arrays)
  return manifest, arrays


class _Recording(dict):
  """A dict that remembers which keys were read."""

  def __init__(self, *a, **k):
    super().__init__(*a, **k)
    self.read: set[str] = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)


def check_forward(manifest: dict, arrays: dict[str, np.ndarray]) -> None:
  """Traces the integer forward (no compilation): it must find every array
  it needs and use every exported one, or the export describes a model the
  forward does not implement."""
  params = _Recording(int_forward.prepare(manifest, arrays))
  x = jax.ShapeDtypeStruct((1, *manifest["model"]["image_shape"]),
                           jnp.float32)
  forward = int_forward.make_forward(manifest)
  try:
    jax.eval_shape(lambda x: forward(params, x), x)
  except KeyError as e:
    raise fmt.ExportError(
        f"the integer forward of a {manifest['model']['name']} needs "
        f"{e.args[0]!r}, which the model does not have: this model "
        "structure is not supported by the export") from None
  unused = sorted(set(arrays) - params.read)
  if unused:
    raise fmt.ExportError(
        f"the integer forward of a {manifest['model']['name']} does not use "
        f"{', '.join(unused[:4])}: this model structure is not supported by "
        "the export")
