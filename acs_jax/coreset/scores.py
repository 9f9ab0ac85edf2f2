"""Per-sample importance scores for adaptive coreset selection (ACS).

Two scores from the paper (arXiv 2306.07215, Sec. 4):

* Error vector score (EVS): ``||softmax(student_logits) - onehot(label)||_2``,
  i.e. EL2N evaluated with the current (quantized) student.
* Disagreement score (DS): ``||softmax(student_logits) - softmax(teacher)||_2``,
  the distance between the student's and the full-precision teacher's
  predictive distributions.

The score functions are pure ``jnp`` and always compute in float32 (bf16 or
f16 inputs are upcast first) through a max-subtracted log-softmax, so logits of
magnitude 1e4 give finite results.

`score_dataset` is the host-side driver: it streams fixed-shape, padded,
host-local batches through ONE jitted, vmapped score function on a
data-parallel mesh and writes every valid row into ``[N]`` host arrays by its
sample index. `compute_teacher_probs` runs the teacher once per run and caches
its softmax on host.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from acs_jax import sharding as sharding_lib

Array = jax.Array
ApplyFn = Callable[[Any, Array], tuple[Array, Array]]
ScoreFn = Callable[[Any, Mapping[str, Array]], dict[str, Array]]

# Above this many teacher-probability entries (N*K) the cache is float16:
# 5e7 float32 entries are 200 MB of host memory; ImageNet (1.28M x 1000)
# would need 5 GB in float32 and half that in float16.
TEACHER_F32_MAX_ENTRIES = 50_000_000

# Outputs `score_dataset` can keep, with their per-sample trailing rank.
_KEEPABLE = ("evs", "ds", "logits", "embedding")


# ---------------------------------------------------------------------------
# Scores (pure jnp).
# ---------------------------------------------------------------------------


def _softmax_f32(logits: Array) -> Array:
  """Softmax in float32 via log-softmax (max-subtracted, so no overflow)."""
  return jnp.exp(jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32),
                                    axis=-1))


def error_vector_score(logits: Array, labels: Array) -> Array:
  """EVS (= EL2N): L2 distance between the softmax and the one-hot label.

  Args:
    logits: [N, K] logits, any float dtype (computed in float32).
    labels: [N] integer labels in [0, K).

  Returns:
    [N] float32 scores in [0, sqrt(2)].
  """
  probs = _softmax_f32(logits)
  onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=jnp.float32)
  return jnp.linalg.norm(probs - onehot, axis=-1)


def disagreement_score_from_probs(student_logits: Array,
                                  teacher_probs: Array) -> Array:
  """DS against cached teacher probabilities.

  Args:
    student_logits: [N, K] student logits, any float dtype.
    teacher_probs: [N, K] teacher softmax (e.g. a float16 host cache); upcast
      to float32, not renormalised.

  Returns:
    [N] float32 scores in [0, sqrt(2)].
  """
  probs = _softmax_f32(student_logits)
  return jnp.linalg.norm(probs - jnp.asarray(teacher_probs).astype(jnp.float32),
                         axis=-1)


def disagreement_score(student_logits: Array, teacher_logits: Array) -> Array:
  """DS: L2 distance between student and teacher softmax outputs.

  Args:
    student_logits: [N, K] student logits, any float dtype.
    teacher_logits: [N, K] teacher logits, any float dtype.

  Returns:
    [N] float32 scores in [0, sqrt(2)].
  """
  return disagreement_score_from_probs(student_logits,
                                       _softmax_f32(teacher_logits))


def make_score_fn(apply_fn: ApplyFn) -> ScoreFn:
  """Builds the per-batch score function.

  Args:
    apply_fn: ``apply_fn(variables, images) -> (logits [B, K], embedding
      [B, D])``, the student's eval-mode forward pass. The caller binds
      ``train=False`` so BatchNorm uses (and does not update) its running
      statistics and no augmentation is applied; outputs of one row then do
      not depend on the other rows of the batch.

  Returns:
    ``score_fn(variables, batch) -> dict`` for one batch, where ``batch`` has
    'image' [B, ...], 'label' [B] int, 'index' [B] int, 'mask' [B] bool and
    'teacher_probs' [B, K]. The result holds 'evs' [B], 'ds' [B], 'logits'
    [B, K] float32, 'embedding' [B, D] float32 and the passed-through 'index'
    [B] and 'mask' [B]. No state is returned: scoring never changes the
    variables.
  """

  def score_fn(variables: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
    logits, embedding = apply_fn(variables, batch["image"])
    logits = jnp.asarray(logits).astype(jnp.float32)
    return {
        "evs": error_vector_score(logits, batch["label"]),
        "ds": disagreement_score_from_probs(logits, batch["teacher_probs"]),
        "logits": logits,
        "embedding": jnp.asarray(embedding).astype(jnp.float32),
        "index": batch["index"],
        "mask": batch["mask"],
    }

  return score_fn


# ---------------------------------------------------------------------------
# Host driver.
# ---------------------------------------------------------------------------


def _chunk_sharding(mesh: Mesh) -> NamedSharding:
  """[chunk, batch, ...] arrays: the batch axis (axis 1) split over "data"."""
  return NamedSharding(mesh, P(None, sharding_lib.DATA_AXIS))


def _to_global_chunk(tree: Any, mesh: Mesh) -> Any:
  """Like sharding.host_to_global, but for a leading (unsharded) chunk axis."""
  shard = _chunk_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(shard, np.asarray(x)),
      tree)


def _normalise_batch(batch: Mapping[str, Any], rows: int | None) -> dict:
  """Checks one host batch; fills a missing mask and pads short batches.

  Args:
    batch: host dict with 'image', 'index' and optionally 'label', 'mask'.
    rows: expected number of rows (the first batch's), or None for the first.

  Returns:
    A dict of numpy arrays with exactly `rows` rows (mask False on padding).
  """
  out = {k: np.asarray(batch[k]) for k in ("image", "index")}
  b = out["index"].shape[0]
  # The teacher pass needs no labels; a placeholder keeps one code path.
  out["label"] = (np.asarray(batch["label"]) if "label" in batch
                  else np.zeros((b,), np.int32))
  out["mask"] = (np.asarray(batch["mask"], bool) if "mask" in batch
                 else np.ones((b,), bool))
  for k, v in out.items():
    if v.shape[0] != b:
      raise ValueError(f"batch field {k!r} has {v.shape[0]} rows, 'index' "
                       f"has {b}")
  if rows is not None and b != rows:
    if b > rows:
      raise ValueError(f"batch of {b} rows after a first batch of {rows}; "
                       "all batches must have the first batch's shape")
    # A short tail the pipeline did not pad: pad here, masked out.
    out = {k: np.concatenate([v, np.zeros((rows - b,) + v.shape[1:], v.dtype)])
           for k, v in out.items()}
  return out


def _iter_chunks(batches: Iterable[Mapping[str, Any]],
                 batches_per_call: int,
                 mesh: Mesh,
                 extra: Callable[[dict], dict] | None = None,
                 ) -> Iterator[dict]:
  """Groups host batches into stacked [batches_per_call, B, ...] chunks.

  The last chunk is completed with fully-masked copies of a zero batch so
  every call has the same shape (one compile).

  Args:
    batches: iterable of host-local batch dicts.
    batches_per_call: batches stacked per device call (>= 1).
    mesh: the data-parallel mesh (only its size is used here).
    extra: optional function adding fields to a normalised batch (e.g. the
      gathered teacher probabilities).

  Yields:
    Host dicts of stacked numpy arrays.
  """
  if batches_per_call < 1:
    raise ValueError(f"batches_per_call must be >= 1, got {batches_per_call}")
  n_dev = mesh.devices.size
  rows = None
  pending: list[dict] = []
  for batch in batches:
    b = _normalise_batch(batch, rows)
    if rows is None:
      rows = b["index"].shape[0]
      global_rows = rows * jax.process_count()
      sharding_lib.check_batch(global_rows, n_dev, "global batch size")
    if extra is not None:
      b.update(extra(b))
    pending.append(b)
    if len(pending) == batches_per_call:
      yield {k: np.stack([p[k] for p in pending]) for k in pending[0]}
      pending = []
  if pending:
    blank = {k: np.zeros_like(v) for k, v in pending[0].items()}
    pending += [blank] * (batches_per_call - len(pending))
    yield {k: np.stack([p[k] for p in pending]) for k in pending[0]}


def _run_pipelined(call: Callable[[Any, Any], Any], variables: Any,
                   chunks: Iterator[dict], mesh: Mesh,
                   consume: Callable[[dict], None]) -> None:
  """Dispatches chunk i+1 before fetching (and consuming) chunk i's results.

  JAX dispatch is asynchronous, so the only host sync per call is the fetch,
  which then overlaps with the next call's device work.
  """
  in_flight = None
  for chunk in chunks:
    out = call(variables, _to_global_chunk(chunk, mesh))
    if in_flight is not None:
      consume(sharding_lib.to_host(in_flight))
    in_flight = out
  if in_flight is not None:
    consume(sharding_lib.to_host(in_flight))


class _IndexedWriter:
  """Writes valid rows of stacked results into [N, ...] arrays by index.

  Keeps a per-sample count so a missing or repeated index is an error, never
  a silently wrong score.
  """

  def __init__(self, num_samples: int, fields: Sequence[str],
               dtypes: Mapping[str, Any] | None = None):
    self.num_samples = int(num_samples)
    self.fields = tuple(fields)
    self.dtypes = dict(dtypes or {})
    self.arrays: dict[str, np.ndarray] = {}
    self.counts = np.zeros((self.num_samples,), np.int64)

  def __call__(self, out: Mapping[str, np.ndarray]) -> None:
    mask = np.asarray(out["mask"], bool).reshape(-1)
    idx = np.asarray(out["index"]).reshape(-1)[mask].astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
      bad = idx[(idx < 0) | (idx >= self.num_samples)]
      raise ValueError(f"sample indices {bad[:10].tolist()} are outside "
                       f"[0, {self.num_samples})")
    np.add.at(self.counts, idx, 1)
    if idx.size and self.counts[idx].max() > 1:
      dup = np.unique(idx[self.counts[idx] > 1])
      raise ValueError(f"sample indices {dup[:10].tolist()} were scored "
                       "more than once")
    for k in self.fields:
      v = np.asarray(out[k])
      v = v.reshape((-1,) + v.shape[2:])[mask]
      if k not in self.arrays:
        dtype = self.dtypes.get(k, v.dtype)
        self.arrays[k] = np.zeros((self.num_samples,) + v.shape[1:], dtype)
      self.arrays[k][idx] = v

  def finish(self) -> dict[str, np.ndarray]:
    missing = np.flatnonzero(self.counts == 0)
    if missing.size:
      raise ValueError(
          f"{missing.size} of {self.num_samples} samples were never scored, "
          f"e.g. indices {missing[:10].tolist()}")
    return self.arrays


@functools.lru_cache(maxsize=32)
def _jitted_scorer(score_fn: ScoreFn, keep: tuple[str, ...]):
  """One jitted vmapped scorer per (score_fn, keep): compiled once and reused
  by every `score_dataset` call of a run (selection every R epochs)."""
  wanted = keep + ("index", "mask")

  def call(variables, chunk):
    out = jax.vmap(score_fn, in_axes=(None, 0))(variables, chunk)
    # Drop unrequested outputs on device: logits/embeddings are the bulk of
    # the device-to-host traffic.
    return {k: out[k] for k in wanted}

  return jax.jit(call)


def score_dataset(score_fn: ScoreFn,
                  variables: Any,
                  batches: Iterable[Mapping[str, Any]],
                  num_samples: int,
                  mesh: Mesh,
                  *,
                  teacher_probs: np.ndarray,
                  keep: Sequence[str] = ("evs", "ds"),
                  batches_per_call: int = 1) -> dict[str, np.ndarray]:
  """Scores every training sample exactly once.

  Args:
    score_fn: from `make_score_fn`. The jitted vmapped wrapper is cached per
      (score_fn, keep), so reuse the same score_fn across selection rounds to
      compile once per run.
    variables: student variables (host or device pytree); replicated.
    batches: iterable of host-local numpy dicts with 'image', 'label',
      'index' [B] and 'mask' [B] of fixed shape; the tail is padded with
      mask=False rows (a short, unpadded tail is padded here). The global
      batch (B x processes) must be a multiple of the device count. With
      several processes every host must yield the same number of batches
      (each call is a collective).
    num_samples: N, the number of samples; indices must cover [0, N) once.
    mesh: 1-D data-parallel mesh (axis "data").
    teacher_probs: [N, K] host array of teacher softmax outputs (any float
      dtype, e.g. the float16 cache of `compute_teacher_probs`); rows are
      gathered on host by sample index.
    keep: outputs to return besides 'evs' and 'ds': any of 'logits',
      'embedding'.
    batches_per_call: batches stacked into one device call (the last call is
      padded with fully-masked batches).

  Returns:
    Dict of numpy arrays indexed by sample index: 'evs', 'ds' [N] float32,
    plus 'logits' [N, K] / 'embedding' [N, D] float32 when in `keep`.

  Raises:
    ValueError: bad `keep`, batch size not a multiple of the device count, a
      sample index out of range, scored twice, or never scored.
  """
  unknown = [k for k in keep if k not in _KEEPABLE]
  if unknown:
    raise ValueError(f"keep={tuple(keep)} has unknown outputs {unknown}; "
                     f"valid: {_KEEPABLE}")
  if teacher_probs is None:
    raise ValueError("teacher_probs is required (see compute_teacher_probs)")
  teacher_probs = np.asarray(teacher_probs)
  if teacher_probs.ndim != 2 or teacher_probs.shape[0] != num_samples:
    raise ValueError(f"teacher_probs must be [N={num_samples}, K], got "
                     f"{teacher_probs.shape}")
  fields = tuple(k for k in _KEEPABLE if k in ("evs", "ds") or k in keep)

  def gather_teacher(b: dict) -> dict:
    # Padding rows may carry any index; point them at row 0 (masked anyway).
    idx = np.where(b["mask"], b["index"], 0)
    idx = np.clip(idx, 0, num_samples - 1)
    return {"teacher_probs": teacher_probs[idx]}

  call = _jitted_scorer(score_fn, fields)
  variables = jax.device_put(variables, sharding_lib.replicated(mesh))
  writer = _IndexedWriter(num_samples, fields)
  chunks = _iter_chunks(batches, batches_per_call, mesh, gather_teacher)
  _run_pipelined(call, variables, chunks, mesh, writer)
  return writer.finish()


@functools.lru_cache(maxsize=8)
def _jitted_teacher(teacher_apply_fn: Callable[[Any, Array], Any]):
  """Jitted vmapped teacher softmax, cached per apply fn (compiled once)."""

  def one(variables, batch):
    out = teacher_apply_fn(variables, batch["image"])
    logits = out[0] if isinstance(out, (tuple, list)) else out
    return {"probs": _softmax_f32(logits), "index": batch["index"],
            "mask": batch["mask"]}

  return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def _teacher_dtype(num_samples: int, num_classes: int, dtype) -> np.dtype:
  if dtype is not None:
    return np.dtype(dtype)
  if num_samples * num_classes <= TEACHER_F32_MAX_ENTRIES:
    return np.dtype(np.float32)
  return np.dtype(np.float16)


def compute_teacher_probs(teacher_apply_fn: Callable[[Any, Array], Any],
                          teacher_variables: Any,
                          batches: Iterable[Mapping[str, Any]],
                          num_samples: int,
                          mesh: Mesh,
                          dtype=None,
                          *,
                          batches_per_call: int = 1) -> np.ndarray:
  """Runs the (fixed, full-precision) teacher once and caches its softmax.

  The teacher never changes during QAT, so its probabilities are computed once
  per run and the disagreement score only needs the student's forward pass.

  Args:
    teacher_apply_fn: ``fn(variables, images)`` returning logits [B, K], or a
      tuple/list whose first element is the logits (e.g. (logits,
      embedding)); eval mode bound by the caller.
    teacher_variables: the teacher's variables; replicated over the mesh.
    batches: host batches as for `score_dataset` ('image', 'index', 'mask';
      'label' is not needed by the teacher but accepted).
    num_samples: N.
    mesh: 1-D data-parallel mesh.
    dtype: storage dtype of the cache. Default: float32 when N*K <=
      50_000_000 (<= 200 MB), else float16 (halves host memory, e.g. 2.6 GB
      instead of 5.1 GB for ImageNet-1k; probabilities keep ~3 significant
      digits, ample for an L2 distance whose values lie in [0, sqrt(2)]).
    batches_per_call: batches stacked per device call.

  Returns:
    [N, K] numpy array of teacher probabilities indexed by sample index.
  """
  jitted = _jitted_teacher(teacher_apply_fn)
  variables = jax.device_put(teacher_variables, sharding_lib.replicated(mesh))
  writer = None

  def consume(out):
    nonlocal writer
    if writer is None:
      k = out["probs"].shape[-1]
      writer = _IndexedWriter(num_samples, ("probs",),
                              {"probs": _teacher_dtype(num_samples, k, dtype)})
    writer(out)

  chunks = _iter_chunks(batches, batches_per_call, mesh)
  _run_pipelined(jitted, variables, chunks, mesh, consume)
  if writer is None:
    raise ValueError("no batches were given")
  return writer.finish()["probs"]
