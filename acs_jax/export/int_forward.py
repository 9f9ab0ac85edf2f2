"""Integer inference over an export file: a pure JAX forward, no Flax.

    params = prepare(manifest, arrays)          # unpacks the codes once
    forward = make_forward(manifest)            # jit-able: forward(params, x)
    logits = jax.jit(forward)(params, images)   # images normalised, NHWC

Every conv/dense layer with quantized weights AND a quantized input computes

    a = clip(round(x / s_a), Qn_a, Qp_a)                  integer codes
    acc = sum(a * w)                                      int32 accumulation
    y = float32(acc) * (s_a * s_w)  (+ float bias)        the step product once

with `a` and the weight codes `w` int8 (int32 for 8-bit unsigned inputs,
whose codes reach 255) and `preferred_element_type=int32`. Conv impl "conv"
is lax.conv_general_dilated on the integers; "patches" gathers the kh*kw
shifted windows and contracts them with an integer lax.dot_general (XLA:GPU
has integer dots but no integer convolutions); "auto" picks "patches" on GPU,
"conv" elsewhere. Both give the same int32 sums exactly.

A layer with quantized weights and a float input (the "w2" = W2/A32 case)
multiplies the float activation by the integer codes (as float32) and applies
s_w once afterwards: y = conv(x, float32(w)) * s_w. A layer with a quantized
input and float weights: y = conv(float32(a), kernel) * s_a. Everything else
(BatchNorm, biases, LearnableBias, PReLU, ReLU/ReLU6, pooling, zero-pad
shortcuts) is float32, with the operations in the order the Flax model uses.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from acs_jax.export import format as fmt

CONV_IMPLS = ("auto", "conv", "patches")
_DN = ("NHWC", "HWIO", "NHWC")


def prepare(manifest: dict, arrays: dict[str, np.ndarray]) -> dict:
  """The forward's parameters: arrays by name, weight codes unpacked to int8
  kernels of their layer's shape (the packed entries are dropped)."""
  params = {k: np.asarray(v) for k, v in arrays.items()}
  for layer in manifest["layers"].values():
    w = layer["weight"]
    if w is None:
      continue
    packed = params.pop(w["codes_array"])
    codes = fmt.unpack_codes(packed, w["bits"], w["count"])
    params[w["codes_array"]] = codes.reshape(layer["kernel_shape"])
  return jax.tree.map(jnp.asarray, params)


# ---------------------------------------------------------------------------
# Integer primitives.


def act_codes(x: jax.Array, step: jax.Array, bits: int, signed: bool
              ) -> jax.Array:
  """clip(round(x / step), Qn, Qp) as integers (LSQ's forward, unscaled)."""
  qn, qp = fmt.qrange(bits, signed)
  codes = jnp.clip(jnp.round(x / step), qn, qp)
  return codes.astype(jnp.int8 if qn >= -128 and qp <= 127 else jnp.int32)


def int_conv(a: jax.Array, w: jax.Array, strides, padding, groups: int = 1,
             impl: str = "auto") -> jax.Array:
  """int32 sums of integer activations [N,H,W,C] x integer kernel HWIO."""
  if a.dtype != w.dtype:
    a, w = a.astype(jnp.int32), w.astype(jnp.int32)
  if impl == "auto":
    impl = "patches" if jax.default_backend() == "gpu" else "conv"
  if impl == "conv":
    return lax.conv_general_dilated(
        a, w, window_strides=tuple(strides),
        padding=tuple(map(tuple, padding)), dimension_numbers=_DN,
        feature_group_count=groups, preferred_element_type=jnp.int32)
  if impl != "patches":
    raise ValueError(f"conv impl {impl!r}; valid: {', '.join(CONV_IMPLS)}")
  kh, kw, cig, cout = w.shape
  sh, sw = strides
  a = jnp.pad(a, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, hp, wp, _ = a.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  windows = [a[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  p = jnp.stack(windows, axis=3).reshape(n, ho, wo, kh * kw, groups, cig)
  k = w.reshape(kh * kw, cig, groups, cout // groups)
  out = lax.dot_general(p, k, (((3, 5), (0, 1)), ((4,), (2,))),
                        preferred_element_type=jnp.int32)  # [g, n, ho, wo, d]
  return jnp.moveaxis(out, 0, 3).reshape(n, ho, wo, cout)


def int_dense(a: jax.Array, w: jax.Array) -> jax.Array:
  if a.dtype != w.dtype:
    a, w = a.astype(jnp.int32), w.astype(jnp.int32)
  return lax.dot_general(a, w, (((1,), (0,)), ((), ())),
                         preferred_element_type=jnp.int32)


def _float_conv(x, k, layer):
  return lax.conv_general_dilated(
      x, k, window_strides=tuple(layer["strides"]),
      padding=tuple(map(tuple, layer["padding"])), dimension_numbers=_DN,
      feature_group_count=layer["groups"])


def apply_layer(manifest: dict, params: dict, name: str, x: jax.Array,
                impl: str = "auto") -> jax.Array:
  """One exported conv/dense layer (with its input quantizer) on `x`."""
  layer = manifest["layers"][name]
  conv = layer["kind"] == "conv"
  aq = layer["input_quant"]
  aq = manifest["act_quant"][aq] if aq is not None else None
  w = layer["weight"]
  if aq is not None:
    a_step = params[aq["step_array"]]
    x = act_codes(x, a_step, aq["bits"], aq["signed"])
  if w is not None:
    w_step = params[w["step_array"]]
    k = params[w["codes_array"]]
  else:
    k = params[layer["kernel_array"]]
  if aq is not None and w is not None:  # integer x integer, int32 sums
    acc = (int_conv(x, k, layer["strides"], layer["padding"], layer["groups"],
                    impl) if conv else int_dense(x, k))
    y = acc.astype(jnp.float32) * (a_step * w_step)
  else:
    xf = x.astype(jnp.float32)
    kf = k.astype(jnp.float32)
    y = _float_conv(xf, kf, layer) if conv else jnp.dot(xf, kf)
    if aq is not None:
      y = y * a_step
    elif w is not None:
      y = y * w_step
  if layer["bias"]:
    y = y + params[layer["bias_array"]]
  return y


# ---------------------------------------------------------------------------
# Float glue, in the Flax model's order of operations.


def batch_norm(params: dict, name: str, x: jax.Array, eps: float):
  """Eval-mode BatchNorm: (x - mean) * (rsqrt(var + eps) * scale) + bias."""
  mul = lax.rsqrt(params[f"{name}/var"] + eps) * params[f"{name}/scale"]
  return (x - params[f"{name}/mean"]) * mul + params[f"{name}/bias"]


def _prelu(params, name, x):
  return jnp.where(x >= 0, x, params[f"{name}/slope"] * x)


def _bias(params, name, x):
  return x + params[f"{name}/bias"]


def _zero_pad(x, features: int, strides: int):
  extra = features - x.shape[-1]
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra // 2)))


def _max_pool_3x3_s2(x):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def _shortcut(m, p, block, prefix, x, layer):
  if block["shortcut"] == "identity":
    return x
  if block["shortcut"] == "zero_pad":
    return _zero_pad(x, block["out"], block["stride"])
  eps = m["batch_norm_epsilon"]
  return batch_norm(p, f"{prefix}/BatchNorm_0", layer(f"{prefix}/QConv_0", x),
                    eps)


def _basic_block(m, p, block, x, layer):
  n, eps = block["name"], m["batch_norm_epsilon"]
  y = jax.nn.relu(batch_norm(p, f"{n}/BatchNorm_0", layer(f"{n}/QConv_0", x),
                             eps))
  y = batch_norm(p, f"{n}/BatchNorm_1", layer(f"{n}/QConv_1", y), eps)
  return jax.nn.relu(y + _shortcut(m, p, block, f"{n}/Shortcut_0", x, layer))


def _official_block(m, p, block, x, layer):
  n, eps = block["name"], m["batch_norm_epsilon"]
  y = x
  for i in (1, 2):
    y = _bias(p, f"{n}/bias{i}2", _prelu(p, f"{n}/prelu{i}",
                                         _bias(p, f"{n}/bias{i}1", y)))
    y = batch_norm(p, f"{n}/bn{i}", layer(f"{n}/conv{i}", y), eps)
  y = y + _shortcut(m, p, block, f"{n}/shortcut", x, layer)
  return _bias(p, f"{n}/bias32", _prelu(p, f"{n}/prelu3",
                                        _bias(p, f"{n}/bias31", y)))


def resnet_forward(m, p, x, layer):
  eps = m["batch_norm_epsilon"]
  x = jax.nn.relu(batch_norm(p, "stem_bn", layer("stem_conv", x), eps))
  if m["model"]["stem"] == "imagenet":
    x = _max_pool_3x3_s2(x)
  blocks = {"basic": _basic_block, "official": _official_block}
  for block in m["blocks"]:
    x = blocks[block["kind"]](m, p, block, x, layer)
  return layer("head", jnp.mean(x, axis=(1, 2)))


def mobilenetv2_forward(m, p, x, layer):
  eps = m["batch_norm_epsilon"]
  relu6 = lambda v: jnp.clip(v, 0.0, 6.0)  # noqa: E731
  x = relu6(batch_norm(p, "stem_bn", layer("stem_conv", x), eps))
  for block in m["blocks"]:
    n, k = block["name"], 0
    y = x
    if block["expand_ratio"] != 1:
      y = relu6(batch_norm(p, f"{n}/BatchNorm_0", layer(f"{n}/QConv_0", y),
                           eps))
      k = 1
    y = relu6(batch_norm(p, f"{n}/BatchNorm_{k}",
                         layer(f"{n}/QConv_{k}", y), eps))
    y = batch_norm(p, f"{n}/BatchNorm_{k + 1}",
                   layer(f"{n}/QConv_{k + 1}", y), eps)
    x = x + y if block["residual"] else y
  x = relu6(batch_norm(p, "last_bn", layer("last_conv", x), eps))
  return layer("head", jnp.mean(x, axis=(1, 2)))  # dropout: identity at eval


FORWARDS = {"resnet": resnet_forward, "mobilenetv2": mobilenetv2_forward}


def make_forward(manifest: dict, impl: str = "auto"
                 ) -> Callable[[dict, jax.Array], jax.Array]:
  """forward(params, images) -> float32 logits, for `prepare`'s params."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl {impl!r}; valid: {', '.join(CONV_IMPLS)}")
  fam = manifest["model"].get("family")
  if fam not in FORWARDS:
    raise fmt.ExportError(f"model family {fam!r} has no integer forward; "
                          f"supported: {', '.join(FORWARDS)}")

  def forward(params, x):
    layer = functools.partial(apply_layer, manifest, params, impl=impl)
    x = jnp.asarray(x, jnp.float32)
    return FORWARDS[fam](manifest, params, x, layer).astype(jnp.float32)

  return forward
