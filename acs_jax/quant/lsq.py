"""LSQ fake quantization (Esser et al., 2020) as a `jax.custom_vjp` primitive.

Conventions (v = x / step, Qn/Qp the integer range of `bits`):

  | region          | forward q            | dq/dx | dq/dstep (before grad_scale) |
  |-----------------|----------------------|-------|------------------------------|
  | v < Qn          | Qn * step            | 0     | Qn                           |
  | Qn <= v <= Qp   | round(v) * step      | 1     | round(v) - v                 |
  | v > Qp          | Qp * step            | 0     | Qp                           |

`round` is round-half-to-even (jnp.round, as torch.round). The step-size
gradient is multiplied by `grad_scale`, by default 1 / sqrt(N * Qp) with N the
number of elements that share one step size (LSQ's scale; for a per-tensor
step N = x.size). Signed ranges are [-2^(b-1), 2^(b-1) - 1], unsigned
[0, 2^b - 1]. 32 (or None) bits is the identity, bit for bit.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

FLOAT_BITS = 32


def is_quantized(bits: int | None) -> bool:
  """Whether `bits` asks for quantization (None and >= 32 mean float)."""
  return bits is not None and bits < FLOAT_BITS


def qrange(bits: int, signed: bool) -> tuple[int, int]:
  """The integer range (Qn, Qp) of a `bits`-bit signed/unsigned quantizer."""
  if not isinstance(bits, int) or bits < 1:
    raise ValueError(f"bits must be an integer >= 1 (or 32/None for float), "
                     f"got {bits!r}")
  if signed:
    if bits < 2:
      raise ValueError("a signed quantizer needs at least 2 bits, got 1")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


def default_grad_scale(num_elements: int, bits: int, signed: bool) -> float:
  """LSQ's step-size gradient scale 1/sqrt(N * Qp)."""
  _, qp = qrange(bits, signed)
  return 1.0 / math.sqrt(num_elements * qp)


def init_step(x: jax.Array, bits: int, signed: bool,
              axes: tuple[int, ...] | None = None) -> jax.Array:
  """LSQ step-size initialisation 2 * mean(|x|) / sqrt(Qp).

  Args:
    x: the tensor to be quantized (weights, or the first batch of activations).
    bits: bit width.
    signed: signed or unsigned integer range.
    axes: axes to average over; None means all (a per-tensor scalar step).
      For per-output-channel weight steps pass all axes but the last.

  Returns:
    The step size(s), float32, strictly positive (a tiny floor keeps an
    all-zero tensor from producing step 0).
  """
  _, qp = qrange(bits, signed)
  mean_abs = jnp.mean(jnp.abs(x.astype(jnp.float32)), axis=axes)
  return jnp.maximum(2.0 * mean_abs / math.sqrt(qp), 1e-8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _lsq(bits, signed, x, step, grad_scale):
  qn, qp = qrange(bits, signed)
  v = x / step
  return (jnp.clip(jnp.round(v), qn, qp) * step).astype(x.dtype)


def _lsq_fwd(bits, signed, x, step, grad_scale):
  return _lsq(bits, signed, x, step, grad_scale), (x, step, grad_scale)


def _reduce_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums a broadcast result back to `shape` (the step's shape)."""
  lead = g.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(
      lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
  return jnp.sum(g, axis=axes).reshape(shape)


def _lsq_bwd(bits, signed, res, g):
  x, step, grad_scale = res
  qn, qp = qrange(bits, signed)
  v = x.astype(jnp.float32) / step
  below = v < qn
  above = v > qp
  inside = jnp.logical_not(below | above)
  g32 = g.astype(jnp.float32)
  dx = jnp.where(inside, g, jnp.zeros_like(g)).astype(x.dtype)
  dstep_elem = jnp.where(below, float(qn),
                         jnp.where(above, float(qp), jnp.round(v) - v))
  dstep = _reduce_to_shape(g32 * dstep_elem, jnp.shape(step)) * grad_scale
  return dx, dstep.astype(step.dtype), jnp.zeros_like(grad_scale)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_quantize(x: jax.Array, step: jax.Array, bits: int | None,
                 signed: bool, grad_scale: float | jax.Array | None = None
                 ) -> jax.Array:
  """LSQ fake quantization: clip(round(x / step), Qn, Qp) * step.

  Args:
    x: tensor to quantize (any float dtype; the result has x's dtype).
    step: positive step size(s), float32, a scalar or broadcastable against x
      (e.g. shape [C_out] for per-output-channel kernel steps).
    bits: bit width; 32 or None returns `x` itself (the exact float path).
    signed: signed range [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1].
    grad_scale: multiplier of the step-size gradient; None uses LSQ's
      1/sqrt(N * Qp), N = elements per step size (x.size / step.size).

  Returns:
    The fake-quantized tensor, shape and dtype of `x`.
  """
  if not is_quantized(bits):
    return x
  step = jnp.asarray(step, jnp.float32)
  if grad_scale is None:
    per_step = max(1, x.size // max(1, step.size))
    grad_scale = default_grad_scale(per_step, bits, signed)
  grad_scale = jnp.asarray(grad_scale, jnp.float32)
  return _lsq(int(bits), bool(signed), x, step, grad_scale)
