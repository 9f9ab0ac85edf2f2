"""LSQ quantizer: forward/backward against a float64 NumPy reference."""
import itertools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acs_jax import quant
from acs_jax.quant import lsq_quantize

BITS = (2, 3, 4, 8)


def np_qrange(bits, signed):
  if signed:
    return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
  return 0.0, 2.0 ** bits - 1


def np_lsq(x, step, bits, signed, g, grad_scale=None, step_axes=None):
  """float64 reference: forward q, dL/dx and dL/dstep for L = sum(g * q)."""
  x = np.asarray(x, np.float64)
  step = np.asarray(step, np.float64)
  g = np.asarray(g, np.float64)
  qn, qp = np_qrange(bits, signed)
  v = x / step
  q = np.clip(np.round(v), qn, qp) * step
  inside = (v >= qn) & (v <= qp)
  dx = np.where(inside, g, 0.0)
  per_elem = np.where(v < qn, qn, np.where(v > qp, qp, np.round(v) - v))
  if grad_scale is None:
    grad_scale = 1.0 / math.sqrt((x.size / step.size) * qp)
  dstep = np.sum(g * per_elem, axis=step_axes) * grad_scale
  return q, dx, dstep


def sum_atol(g, per_elem_bound, n):
  """float32 summation error bound for a sum of n terms of size ~|g|*bound."""
  return 1e-6 * np.sum(np.abs(g)) * per_elem_bound / np.sqrt(n) + 1e-6


def make_inputs(seed, shape, step, bits, signed):
  """Values spread inside, below and above the clipping range."""
  rng = np.random.default_rng(seed)
  qn, qp = np_qrange(bits, signed)
  lo, hi = (qn - 3) * step, (qp + 3) * step
  x = rng.uniform(np.min(lo), np.max(hi), size=shape)
  # Avoid the measure-zero rounding ties and range edges, where float32 and
  # float64 may legitimately disagree about the side.
  v = x / step
  frac = v - np.floor(v)
  x = np.where(np.abs(frac - 0.5) < 1e-3, x + 0.01 * step, x)
  return x.astype(np.float32), rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("bits,signed,use_jit",
                         list(itertools.product(BITS, (True, False),
                                                (True, False))))
def test_forward_and_grads_match_float64_reference(bits, signed, use_jit):
  step = np.float32(0.37)
  x, g = make_inputs(bits * 2 + signed, (7, 9, 5), step, bits, signed)
  qn, qp = np_qrange(bits, signed)
  v = x / step
  assert (v < qn).any() and (v > qp).any() and ((v > qn) & (v < qp)).any()

  def loss(x, s):
    return jnp.sum(lsq_quantize(x, s, bits, signed) * g)

  fwd = lambda x, s: lsq_quantize(x, s, bits, signed)  # noqa: E731
  grad = jax.grad(loss, argnums=(0, 1))
  if use_jit:
    fwd, grad = jax.jit(fwd), jax.jit(grad)
  q = fwd(x, step)
  dx, dstep = grad(x, step)
  q_ref, dx_ref, dstep_ref = np_lsq(x, step, bits, signed, g)
  np.testing.assert_allclose(q, q_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=0)
  np.testing.assert_allclose(dstep, dstep_ref, rtol=2e-5,
                             atol=sum_atol(g, 2 ** bits, g.size))


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_step_and_explicit_grad_scale(bits):
  rng = np.random.default_rng(bits)
  step = rng.uniform(0.05, 0.5, size=(6,)).astype(np.float32)
  x, g = make_inputs(bits, (3, 3, 4, 6), step, bits, True)
  dx, dstep = jax.grad(
      lambda x, s: jnp.sum(lsq_quantize(x, s, bits, True) * g),
      argnums=(0, 1))(x, step)
  _, dx_ref, dstep_ref = np_lsq(x, step, bits, True, g, step_axes=(0, 1, 2))
  np.testing.assert_array_equal(dx, dx_ref)
  atol = sum_atol(g, 2 ** bits, g.size)
  np.testing.assert_allclose(dstep, dstep_ref, rtol=2e-5, atol=atol)
  # An explicit grad_scale replaces LSQ's default.
  dstep2 = jax.grad(
      lambda s: jnp.sum(lsq_quantize(x, s, bits, True, grad_scale=0.5) * g)
  )(step)
  _, _, dstep_ref2 = np_lsq(x, step, bits, True, g, grad_scale=0.5,
                            step_axes=(0, 1, 2))
  np.testing.assert_allclose(dstep2, dstep_ref2, rtol=2e-5, atol=atol)


@pytest.mark.parametrize("bits,signed",
                         list(itertools.product(BITS, (True, False))))
def test_values_on_grid_and_at_most_2_pow_b_levels(bits, signed):
  x = jax.random.normal(jax.random.key(bits), (4096,)) * 3
  step = 0.21
  q = np.asarray(lsq_quantize(x, step, bits, signed), np.float64)
  levels = np.unique(q)
  assert len(levels) <= 2 ** bits
  ints = q / step
  np.testing.assert_allclose(ints, np.round(ints), atol=1e-4)
  qn, qp = np_qrange(bits, signed)
  assert ints.min() >= qn - 1e-4 and ints.max() <= qp + 1e-4


@pytest.mark.parametrize("bits", (32, None))
def test_float_bits_is_exact_identity(bits):
  x = jax.random.normal(jax.random.key(0), (5, 7))
  assert lsq_quantize(x, 0.1, bits, True) is x
  g = jax.grad(lambda x: jnp.sum(jnp.sin(lsq_quantize(x, 0.1, bits, True))))(x)
  np.testing.assert_array_equal(g, jnp.cos(x))


@pytest.mark.parametrize("bits,signed,step",
                         list(itertools.product((2, 4, 8), (True, False),
                                                (1e-12, 1e-3, 1.0, 1e6))))
def test_no_nan_or_inf_for_positive_step(bits, signed, step):
  x = jnp.array([-1e30, -5.0, -1e-7, 0.0, 1e-7, 3.0, 1e30], jnp.float32)
  q, (dx, ds) = jax.value_and_grad(
      lambda x, s: jnp.sum(lsq_quantize(x, s, bits, signed)),
      argnums=(0, 1))(x, jnp.float32(step))
  for a in (q, dx, ds):
    assert np.all(np.isfinite(np.asarray(a))), (a, bits, signed, step)


def test_vmap_and_jit_compose_and_compile_once():
  x = jax.random.normal(jax.random.key(1), (6, 10))
  steps = jnp.linspace(0.1, 0.6, 6)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, s):
    per_row = jax.vmap(lambda r, t: lsq_quantize(r, t, 3, True))
    return jax.grad(lambda s: jnp.sum(per_row(x, s) ** 2))(s)

  g1 = f(x, steps)
  g2 = f(x + 1.0, steps)  # same shapes: no second trace
  assert g1.shape == g2.shape == (6,)
  for i in range(6):  # row i on its own, grad_scale of a 10-element tensor
    gi = jax.grad(lambda s: jnp.sum(lsq_quantize(x[i], s, 3, True) ** 2))(
        steps[i])
    np.testing.assert_allclose(g1[i], gi, rtol=1e-5)


def test_init_step_formula():
  w = jax.random.normal(jax.random.key(2), (3, 3, 8, 16))
  for bits, signed in ((2, True), (4, True), (4, False)):
    _, qp = np_qrange(bits, signed)
    wn = np.asarray(w, np.float64)
    np.testing.assert_allclose(
        quant.init_step(w, bits, signed),
        2 * np.mean(np.abs(wn)) / np.sqrt(qp), rtol=1e-5)
    np.testing.assert_allclose(
        quant.init_step(w, bits, signed, axes=(0, 1, 2)),
        2 * np.mean(np.abs(wn), axis=(0, 1, 2)) / np.sqrt(qp), rtol=1e-5)


def test_qrange_and_bad_bits():
  assert quant.qrange(2, True) == (-2, 1)
  assert quant.qrange(2, False) == (0, 3)
  assert quant.qrange(4, True) == (-8, 7)
  with pytest.raises(ValueError, match="bits"):
    quant.qrange(0, True)
  with pytest.raises(ValueError, match="signed"):
    quant.qrange(1, True)


def test_bit_width_names_and_config():
  assert quant.parse_bits("w2") == (2, 32)
  assert quant.parse_bits("W4A4") == (4, 4)
  assert quant.parse_bits("fp") == (32, 32)
  assert quant.bits_name(2, 32) == "w2" and quant.bits_name(4, 4) == "w4a4"
  for bad in ("w1", "w4a9", "int8", "w"):
    with pytest.raises(ValueError, match="config.quant.bits"):
      quant.parse_bits(bad)
  qc = quant.from_config({"bits": "w4a4", "per_channel": True})
  assert (qc.weight_bits, qc.act_bits, qc.per_channel) == (4, 4, True)
  assert hash(qc) == hash(quant.from_config({"bits": "w4a4",
                                              "per_channel": True}))
  assert qc.layer("block") == (4, 4) and qc.layer("stem") == (32, 32)
  assert qc.as_float().is_float
  with pytest.raises(ValueError, match="act_signed"):
    quant.from_config({"bits": "w2", "act_signed": "maybe"})
  with pytest.raises(ValueError, match="weight_bits"):
    quant.QuantConfig(weight_bits=12)


def test_qconv_float_matches_plain_conv_bit_for_bit():
  x = jax.random.normal(jax.random.key(3), (2, 9, 9, 4))
  qconv = quant.QConv(6, (3, 3), (2, 2))
  v = qconv.init(jax.random.key(4), x)
  conv = nn.Conv(6, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False)
  y_ref = conv.apply({"params": {"kernel": v["params"]["kernel"]}}, x)
  np.testing.assert_array_equal(qconv.apply(v, x), y_ref)
  assert set(v["params"]) == {"kernel"}  # no step size at 32 bits


def test_layers_init_steps_from_data_and_recalibrate():
  x = jax.random.uniform(jax.random.key(5), (4, 6, 6, 3)) * 2.0
  act = quant.ActQuant(bits=4, signed=False)
  v = act.init(jax.random.key(0), x)
  np.testing.assert_allclose(
      v["params"]["step"], 2 * np.mean(np.abs(np.asarray(x))) / np.sqrt(15),
      rtol=1e-5)
  conv = quant.QConv(5, (3, 3), weight_bits=2, per_channel=True)
  v = conv.init(jax.random.key(1), x)
  k = np.asarray(v["params"]["kernel"], np.float64)
  np.testing.assert_allclose(v["params"]["w_step"],
                             2 * np.mean(np.abs(k), axis=(0, 1, 2)), rtol=1e-5)
  # Calibration: params mutable (not init) recomputes from the new kernel.
  new_kernel = v["params"]["kernel"] * 3.0
  v2 = {"params": {**v["params"], "kernel": new_kernel}}
  _, upd = conv.apply(v2, x, mutable=["params"])
  np.testing.assert_allclose(upd["params"]["w_step"],
                             3.0 * np.asarray(v["params"]["w_step"]),
                             rtol=1e-5)
  # Without mutable params the step is left alone.
  y = conv.apply(v2, x)
  assert y.shape == (4, 6, 6, 5)
