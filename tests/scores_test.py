"""Tests for acs_jax.coreset.scores (EVS/DS and the sharded scoring driver)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from acs_jax import sharding as sharding_lib
from acs_jax.coreset import scores

NUM_CLASSES = 5
N = 203          # not a multiple of batch x devices
BATCH = 16       # 2 rows per device on the 8-device mesh


# ---------------------------------------------------------------------------
# Float64 NumPy references.
# ---------------------------------------------------------------------------


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_evs(logits, labels):
  p = _np_softmax(logits)
  y = np.eye(p.shape[1])[labels]
  return np.linalg.norm(p - y, axis=-1)


def _np_ds(s, t_probs):
  return np.linalg.norm(_np_softmax(s) - np.asarray(t_probs, np.float64),
                        axis=-1)


def _random_logits(rng, dtype):
  # Rows of very different magnitudes, up to 1e4, incl. exact ties.
  scale = np.repeat([1e-3, 1.0, 30.0, 1e3, 1e4], 8)[:, None]
  z = rng.normal(size=(40, 7)) * scale
  z[0] = 1e4                                  # all equal, huge
  z[1, :] = -1e4
  z[1, 3] = 1e4
  return jnp.asarray(z, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_evs_ds_match_float64_reference(dtype):
  rng = np.random.default_rng(0)
  s = _random_logits(rng, dtype)
  t = _random_logits(rng, dtype)
  labels = rng.integers(0, 7, size=(40,))
  # The reference sees the same (rounded) input values, in float64.
  s64 = np.asarray(s.astype(jnp.float32), np.float64)
  t64 = np.asarray(t.astype(jnp.float32), np.float64)

  evs = jax.jit(scores.error_vector_score)(s, labels)
  ds = jax.jit(scores.disagreement_score)(s, t)
  t_probs16 = _np_softmax(t64).astype(np.float16)
  ds_p = jax.jit(scores.disagreement_score_from_probs)(s, t_probs16)

  for out in (evs, ds, ds_p):
    assert out.dtype == jnp.float32 and out.shape == (40,)
    assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(evs, _np_evs(s64, labels), atol=2e-6)
  np.testing.assert_allclose(ds, _np_ds(s64, _np_softmax(t64)), atol=2e-6)
  np.testing.assert_allclose(ds_p, _np_ds(s64, t_probs16), atol=2e-6)
  # Known values: a uniform row vs a one-hot label; a one-hot prediction.
  np.testing.assert_allclose(evs[0], np.sqrt(6 / 49 + (6 / 7) ** 2),
                             rtol=1e-6)
  assert float(evs[1]) == pytest.approx(0.0 if labels[1] == 3 else np.sqrt(2),
                                        abs=1e-6)


# ---------------------------------------------------------------------------
# A tiny Flax model with BatchNorm, and a NumPy forward for reference.
# ---------------------------------------------------------------------------


class Tiny(nn.Module):
  """Flatten -> Dense(6) -> BatchNorm -> ReLU (embedding) -> Dense(K)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape((x.shape[0], -1))
    h = nn.Dense(6, name="fc1")(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     name="bn")(h)
    emb = nn.relu(h)
    return nn.Dense(NUM_CLASSES, name="head")(emb), emb


MODEL = Tiny()


def _apply_eval(variables, images):
  return MODEL.apply(variables, images, train=False)


def _init_variables(seed):
  v = MODEL.init(jax.random.key(seed), jnp.zeros((2, 2, 2, 3)), train=False)
  v = jax.tree.map(np.asarray, v)
  rng = np.random.default_rng(seed)
  # Non-trivial running statistics so eval mode is distinguishable.
  v["batch_stats"]["bn"]["mean"] = rng.normal(size=6).astype(np.float32)
  v["batch_stats"]["bn"]["var"] = rng.uniform(0.5, 2, 6).astype(np.float32)
  return v


def _np_forward(v, images):
  p, bs = v["params"], v["batch_stats"]["bn"]
  x = np.asarray(images, np.float64).reshape(images.shape[0], -1)
  h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = (h - bs["mean"]) / np.sqrt(bs["var"] + 1e-5)
  h = h * p["bn"]["scale"] + p["bn"]["bias"]
  emb = np.maximum(h, 0)
  return emb @ p["head"]["kernel"] + p["head"]["bias"], emb


def _dataset(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(N, 2, 2, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=(N,)).astype(np.int32)
  teacher = _np_softmax(rng.normal(size=(N, NUM_CLASSES)) * 2)
  return images, labels, teacher.astype(np.float32)


def _batches(images, labels, batch, seed=0, order=None):
  """Shuffled fixed-shape batches; the tail padded with mask=False rows that
  point at index 0 (which must not count as a second visit)."""
  n = images.shape[0]
  order = np.random.default_rng(seed).permutation(n) if order is None else order
  for s in range(0, len(order), batch):
    idx = order[s:s + batch]
    pad = batch - len(idx)
    full_idx = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    yield {"image": images[full_idx], "label": labels[full_idx],
           "index": full_idx.astype(np.int32),
           "mask": np.arange(batch) < len(idx)}


@pytest.fixture(scope="module")
def data():
  return _dataset()


@pytest.fixture(scope="module")
def variables():
  return _init_variables(0)


@pytest.fixture(scope="module")
def score_fn():
  # Module-scoped so tests reusing it hit the driver's compile cache.
  return scores.make_score_fn(_apply_eval)


def _counting(fn):
  """Wraps fn; `.traces` counts Python executions = jit traces."""
  def wrapped(*a):
    wrapped.traces += 1
    return fn(*a)
  wrapped.traces = 0
  return wrapped


def test_score_dataset_sharded_matches_single_device_and_numpy(
    data, variables):
  images, labels, teacher = data
  counted = _counting(scores.make_score_fn(_apply_eval))
  mesh8 = sharding_lib.make_mesh()
  assert mesh8.devices.size == 8
  keep = ("evs", "ds", "logits", "embedding")
  out8 = scores.score_dataset(counted, variables,
                              _batches(images, labels, BATCH, seed=1), N,
                              mesh8, teacher_probs=teacher, keep=keep,
                              batches_per_call=3)
  # 13 batches -> 5 calls (last one padded with masked batches), one trace;
  # a second pass (another selection round) reuses the compiled function.
  out8b = scores.score_dataset(counted, variables,
                               _batches(images, labels, BATCH, seed=2), N,
                               mesh8, teacher_probs=teacher, keep=keep,
                               batches_per_call=3)
  assert counted.traces == 1

  mesh1 = sharding_lib.make_mesh(jax.devices()[:1])
  out1 = scores.score_dataset(scores.make_score_fn(_apply_eval), variables,
                              _batches(images, labels, BATCH, seed=3), N,
                              mesh1, teacher_probs=teacher, keep=keep)

  ref_logits, ref_emb = _np_forward(variables, images)
  ref = {"evs": _np_evs(ref_logits, labels), "ds": _np_ds(ref_logits, teacher),
         "logits": ref_logits, "embedding": ref_emb}
  for k in keep:
    assert out8[k].dtype == np.float32
    assert out8[k].shape[0] == N
    np.testing.assert_allclose(out8[k], ref[k], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out8[k], out1[k], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out8[k], out8b[k])
  assert out8["logits"].shape == (N, NUM_CLASSES)
  assert out8["embedding"].shape == (N, 6)


def test_score_dataset_default_keep_and_index_checks(data, variables,
                                                     score_fn):
  images, labels, teacher = data
  mesh = sharding_lib.make_mesh()
  out = scores.score_dataset(score_fn, variables,
                             _batches(images, labels, BATCH), N, mesh,
                             teacher_probs=teacher)
  assert set(out) == {"evs", "ds"}
  ref_logits, _ = _np_forward(variables, images)
  np.testing.assert_allclose(out["evs"], _np_evs(ref_logits, labels),
                             atol=1e-5)

  order = np.random.default_rng(0).permutation(N)
  dup = np.concatenate([order, order[:1]])   # one sample seen twice
  with pytest.raises(ValueError, match="more than once"):
    scores.score_dataset(score_fn, variables,
                         _batches(images, labels, BATCH, order=dup), N, mesh,
                         teacher_probs=teacher)
  with pytest.raises(ValueError, match="never scored"):
    scores.score_dataset(score_fn, variables,
                         _batches(images, labels, BATCH, order=order[:-5]), N,
                         mesh, teacher_probs=teacher)
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    scores.score_dataset(score_fn, variables,
                         _batches(images, labels, 12), N, mesh,
                         teacher_probs=teacher)
  with pytest.raises(ValueError, match="unknown outputs"):
    scores.score_dataset(score_fn, variables, [], N, mesh,
                         teacher_probs=teacher, keep=("evs", "grads"))


def test_compute_teacher_probs(data, variables):
  images, labels, _ = data
  mesh = sharding_lib.make_mesh()
  teacher_vars = _init_variables(7)
  probs = scores.compute_teacher_probs(
      _apply_eval, teacher_vars, _batches(images, labels, BATCH), N, mesh)
  assert probs.dtype == np.float32 and probs.shape == (N, NUM_CLASSES)
  ref = _np_softmax(_np_forward(teacher_vars, images)[0])
  np.testing.assert_allclose(probs, ref, atol=1e-6)
  probs16 = scores.compute_teacher_probs(
      _apply_eval, teacher_vars, _batches(images, labels, BATCH, seed=5), N,
      mesh, dtype=np.float16)
  assert probs16.dtype == np.float16
  np.testing.assert_allclose(probs16, ref, atol=1e-3)
  # The automatic storage dtype switches to float16 above 5e7 entries.
  assert scores._teacher_dtype(50_000, 1000, None) == np.float32
  assert scores._teacher_dtype(1_281_167, 1000, None) == np.float16


def test_scoring_leaves_batchnorm_stats_and_is_row_independent(
    data, variables, score_fn):
  images, labels, teacher = data
  before = jax.tree.map(np.copy, variables)
  batch = next(_batches(images, labels, BATCH))
  batch["teacher_probs"] = teacher[batch["index"]]
  jitted = jax.jit(score_fn)
  out = jitted(variables, batch)
  assert set(out) == {"evs", "ds", "logits", "embedding", "index", "mask"}
  # Nothing returned is state, and the inputs were not modified.
  jax.tree.map(np.testing.assert_array_equal, variables, before)

  # Eval mode does not update batch_stats even when asked for them...
  _, new_state = MODEL.apply(variables, batch["image"], train=False,
                             mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, new_state["batch_stats"],
               before["batch_stats"])
  # ...whereas train mode would (so the check above can fail).
  _, train_state = MODEL.apply(variables, batch["image"], train=True,
                               mutable=["batch_stats"])
  assert not np.allclose(train_state["batch_stats"]["bn"]["mean"],
                         before["batch_stats"]["bn"]["mean"])

  # Row 0's scores do not depend on the other rows of the batch.
  other = dict(batch)
  other["image"] = batch["image"].copy()
  other["image"][1:] = other["image"][1:] * 100.0 + 5.0
  out2 = jitted(variables, other)
  for k in ("evs", "ds", "logits", "embedding"):
    np.testing.assert_array_equal(np.asarray(out[k])[0],
                                  np.asarray(out2[k])[0])
