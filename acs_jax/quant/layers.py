"""Thin Flax Linen wrappers around `lsq_quantize`: QConv, QDense, ActQuant.

Step sizes are ordinary parameters (`w_step` next to a kernel, `step` in an
ActQuant), initialised as in LSQ: weights 2*mean|w|/sqrt(Qp), activations
2*mean|x|/sqrt(Qp) of the batch seen at `init`.

Re-calibration: applying a model with the "params" collection mutable (and
not initialising), e.g. `model.apply(v, x, train=False, mutable=["params"])`,
recomputes every step size from the current kernels and from the activations
of that batch, in forward order, and returns the updated params. The training
steps never make "params" mutable, so this only happens when asked for; it is
how a student initialised from the teacher's weights gets step sizes that fit
those weights before its first selection (the official code leaves them
uninitialised until the first training step).

Parameters stay float32; `dtype` is the compute dtype (bf16 on accelerators).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from acs_jax.quant.lsq import FLOAT_BITS, init_step, is_quantized, lsq_quantize

# torchvision / the official code initialise convs with kaiming normal, fan out.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _calibrating(module: nn.Module) -> bool:
  return module.is_mutable_collection("params") and not module.is_initializing()


def _step_param(module: nn.Module, name: str, value_fn) -> jax.Array:
  """A step-size parameter, (re)computed from data when calibrating."""
  step = module.param(name, lambda _: value_fn())
  if _calibrating(module):
    step = value_fn()
    module.put_variable("params", name, step)
  return step


class ActQuant(nn.Module):
  """LSQ activation quantizer (identity at 32 bits: no parameter at all)."""
  bits: int = FLOAT_BITS
  signed: bool = False

  @nn.compact
  def __call__(self, x):
    if not is_quantized(self.bits):
      return x
    step = _step_param(self, "step",
                       lambda: init_step(x, self.bits, self.signed))
    return lsq_quantize(x, step, self.bits, self.signed)


class QConv(nn.Module):
  """Conv (NHWC/HWIO) with an LSQ-quantized kernel (signed)."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = None  # None: symmetric k//2 padding, as PyTorch's convs.
  use_bias: bool = False
  feature_group_count: int = 1
  weight_bits: int = FLOAT_BITS
  per_channel: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = conv_kernel_init

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    in_features = x.shape[-1]
    kernel = self.param(
        "kernel", self.kernel_init,
        (kh, kw, in_features // self.feature_group_count, self.features),
        jnp.float32)
    if is_quantized(self.weight_bits):
      axes = (0, 1, 2) if self.per_channel else None
      step = _step_param(
          self, "w_step",
          lambda: init_step(kernel, self.weight_bits, True, axes))
      kernel = lsq_quantize(kernel, step, self.weight_bits, True)
    padding = self.padding
    if padding is None:
      padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    y = lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=tuple(self.strides), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=self.feature_group_count)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class QDense(nn.Module):
  """Dense layer with an optionally LSQ-quantized kernel (signed)."""
  features: int
  use_bias: bool = True
  weight_bits: int = FLOAT_BITS
  per_channel: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (x.shape[-1], self.features), jnp.float32)
    if is_quantized(self.weight_bits):
      axes = (0,) if self.per_channel else None
      step = _step_param(
          self, "w_step",
          lambda: init_step(kernel, self.weight_bits, True, axes))
      kernel = lsq_quantize(kernel, step, self.weight_bits, True)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def calibrate(model: nn.Module, variables: dict, x: jax.Array,
              **apply_kwargs) -> dict:
  """Recomputes every LSQ step size from `variables` and the batch `x`.

  Returns new variables with the updated step sizes (everything else as
  given). BatchNorm statistics are not touched (eval mode).
  """
  _, updates = model.apply(variables, x, train=False, mutable=["params"],
                           **apply_kwargs)
  return {**variables, "params": updates["params"]}
