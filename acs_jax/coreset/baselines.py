"""Coreset-selection baselines (NumPy only), as compared against in the paper.

Every selector maps model-derived host arrays (logits, embeddings, scores) to
sorted, unique int64 sample indices, with keywords `labels`, `fraction`,
`balance` (True: per-class budgets round-half-to-even(fraction * n_c), >= 1 per
non-empty class, exactly as `selector.select_top_fraction`; False: one global
budget round(fraction * N)) and `seed` for the randomised ones. All are
deterministic for a given seed; ties go to the lower index.

`SELECTORS` / `get_selector(name)` give a uniform calling convention
(`selector(inputs, labels=..., fraction=..., balance=..., seed=...,
**options)`); each `Selector` says which per-sample arrays it reads (`needs`:
the training loop keeps only those from `scores.score_dataset`) and whether it
re-selects every R epochs or selects once after warm-up (`mode`, DeepCore's
protocol). ACS itself is registered for its `needs` and `mode`; it selects
through `selector.acs_select`, which also returns the SelectionRecord.

About 510 lines, in one module on purpose: ten small selectors that share the
per-class budgets, the chunked distance kernels and one registry.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from acs_jax.coreset import selector as selector_lib
from acs_jax.coreset.forgetting import ForgettingTracker
from acs_jax.coreset.selector import select_top_fraction

__all__ = [
    "ForgettingTracker", "full", "random_subset", "el2n", "el2n_scores",
    "forgetting", "kcenter_greedy", "moderate", "contextual_diversity",
    "glister", "glister_val_split", "least_confidence", "margin", "entropy",
    "Selector", "SELECTORS", "get_selector",
]

_DEFAULT_CHUNK = 8192


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  """Max-subtracted log-softmax in float64. [N, K] -> [N, K]."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _check_rows(name: str, x: np.ndarray, labels: np.ndarray, ndim: int
                ) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != ndim or x.shape[0] != np.shape(labels)[0]:
    raise ValueError(f"{name} must be {ndim}-D with one row per label "
                     f"({np.shape(labels)[0]}), got shape {x.shape}")
  return x


def _groups(labels: np.ndarray, fraction: float, balance: bool
            ) -> Iterator[tuple[np.ndarray, int]]:
  """Yields (member indices ascending, budget) per class, or one global group.

  The budgets are those of `select_top_fraction`.
  """
  labels = np.asarray(labels).reshape(-1)
  n = labels.shape[0]
  if n == 0:
    return
  if not balance:
    f = selector_lib.check_fraction(fraction)
    yield np.arange(n, dtype=np.int64), max(1, int(np.round(f * n)))
    return
  classes, inv, counts = np.unique(labels, return_inverse=True,
                                   return_counts=True)
  budgets = selector_lib.class_budgets(counts, fraction)
  order = np.argsort(inv.reshape(-1), kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)])
  for c in range(len(classes)):
    yield order[starts[c]:starts[c + 1]].astype(np.int64), int(budgets[c])


def _finish(parts: list[np.ndarray]) -> np.ndarray:
  if not parts:
    return np.zeros((0,), np.int64)
  return np.sort(np.concatenate(parts)).astype(np.int64)


def _greedy_kcenter(dist_to: Callable[[int], np.ndarray], n: int, k: int,
                    start: int) -> np.ndarray:
  """Greedy farthest-point k-center (Gonzalez 1985): a 2-approximation of the
  minimax covering radius for a metric.

  Args:
    dist_to: j -> [n] distances (or any monotone transform, e.g. squared) of
      every point to point j.
    n: number of points.
    k: number of centres, 1 <= k <= n.
    start: first centre.

  Returns:
    [k] int64 positions of the centres, in selection order. k*n distance
    evaluations in total.
  """
  chosen = np.empty((k,), np.int64)
  chosen[0] = start
  min_d = np.asarray(dist_to(start), np.float64).copy()
  # -inf marks chosen points: never picked again, and np.minimum keeps it.
  min_d[start] = -np.inf
  for t in range(1, k):
    j = int(np.argmax(min_d))  # ties -> lowest position
    chosen[t] = j
    np.minimum(min_d, dist_to(j), out=min_d)
    min_d[j] = -np.inf
  return chosen


# ---------------------------------------------------------------------------
# Selectors.
# ---------------------------------------------------------------------------


def full(*, labels: np.ndarray, fraction: float = 1.0,
         balance: bool = True) -> np.ndarray:
  """All N indices (the full-data baseline; fraction/balance ignored)."""
  del fraction, balance
  return np.arange(np.shape(labels)[0], dtype=np.int64)


def random_subset(*, labels: np.ndarray, fraction: float,
                  balance: bool = True, seed: int = 0) -> np.ndarray:
  """Uniformly random subset with the standard budgets, seeded by `seed`.

  Implemented as top-fraction selection on i.i.d. uniform keys from
  np.random.default_rng(seed), so per-class counts match the other methods.
  """
  labels = np.asarray(labels)
  keys = np.random.default_rng(seed).random(labels.shape[0])
  return select_top_fraction(keys, labels, fraction, balance)


def el2n_scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """EL2N: ||softmax(logits) - onehot(labels)||_2 in float64. [N,K] -> [N]."""
  logits = _check_rows("logits", logits, labels, 2)
  p = np.exp(_log_softmax(logits))
  p[np.arange(p.shape[0]), np.asarray(labels, np.int64)] -= 1.0
  return np.sqrt((p * p).sum(axis=-1))


def el2n(logits: np.ndarray | None = None, *, labels: np.ndarray,
         fraction: float, balance: bool = True,
         evs: np.ndarray | None = None) -> np.ndarray:
  """Highest EL2N (Paul et al. 2021). EL2N equals the EVS of
  `scores.error_vector_score`, so pass either `logits` [N, K] or the already
  computed `evs` [N] (what the registry does, to avoid keeping logits)."""
  if (logits is None) == (evs is None):
    raise ValueError("el2n needs exactly one of logits or evs")
  s = el2n_scores(logits, labels) if evs is None else np.asarray(evs)
  return select_top_fraction(s, labels, fraction, balance)


def forgetting(forgetting_counts: np.ndarray, *, labels: np.ndarray,
               fraction: float, balance: bool = True) -> np.ndarray:
  """Most-forgotten samples (Toneva et al. 2019).

  Args:
    forgetting_counts: [N] from `ForgettingTracker.counts()` (never-learned
      samples +inf, i.e. selected first); ties -> lower index.
  """
  counts = _check_rows("forgetting_counts", forgetting_counts, labels, 1)
  return select_top_fraction(counts, labels, fraction, balance)


def kcenter_greedy(embedding: np.ndarray, *, labels: np.ndarray,
                   fraction: float, balance: bool = True, seed: int = 0,
                   chunk_size: int = _DEFAULT_CHUNK) -> np.ndarray:
  """Greedy k-center on embeddings (Sener & Savarese 2018), per class when
  `balance`.

  Starts each group from a point drawn by np.random.default_rng(seed), then
  repeatedly adds the point farthest (Euclidean) from the chosen centres: a
  2-approximation of the optimal covering radius. Squared distances of all
  points to each new centre come from precomputed norms and one
  matrix-vector product (in row chunks of `chunk_size`), so memory stays
  O(n) beyond the embeddings; k*n distance evaluations per group. Float32
  embeddings are compared in float32 (ample to rank distances).

  Args:
    embedding: [N, D] features.

  Returns:
    Sorted int64 indices.
  """
  emb = _check_rows("embedding", embedding, labels, 2)
  rng = np.random.default_rng(seed)
  parts = []
  for members, k in _groups(labels, fraction, balance):
    # float32 at least (f16/bf16 features upcast); float64 stays float64.
    x = np.asarray(emb[members], np.result_type(emb.dtype, np.float32))
    sq = np.einsum("nd,nd->n", x, x)

    def sq_dist(j, x=x, sq=sq):
      # ||x||^2 - 2 x.c + ||c||^2: one matrix-vector product per centre, no
      # [n, D] temporary; clipped at 0 against rounding.
      out = np.empty((x.shape[0],), np.float64)
      for s in range(0, x.shape[0], chunk_size):
        e = slice(s, s + chunk_size)
        out[e] = sq[e] - 2.0 * (x[e] @ x[j]) + sq[j]
      return np.maximum(out, 0.0)

    start = int(rng.integers(len(members)))
    parts.append(members[_greedy_kcenter(sq_dist, len(members), k, start)])
  return _finish(parts)


def moderate(embedding: np.ndarray, *, labels: np.ndarray, fraction: float,
             balance: bool = True) -> np.ndarray:
  """Moderate coreset (Xia et al., ICLR 2023).

  Keeps the samples whose Euclidean distance to their class centre (mean
  embedding of the class) is closest to that class's median distance. With
  balance=False the same per-class score is ranked globally.

  Args:
    embedding: [N, D] features.
  """
  emb = _check_rows("embedding", embedding, labels, 2)
  labels = np.asarray(labels)
  score = np.empty((emb.shape[0],), np.float64)
  for members, _ in _groups(labels, 1.0, True):
    x = np.asarray(emb[members], np.float64)
    d = np.linalg.norm(x - x.mean(axis=0), axis=1)
    score[members] = -np.abs(d - np.median(d))
  return select_top_fraction(score, labels, fraction, balance)


def contextual_diversity(logits: np.ndarray, *, labels: np.ndarray,
                         fraction: float, balance: bool = True, seed: int = 0,
                         chunk_size: int = _DEFAULT_CHUNK) -> np.ndarray:
  """Contextual diversity (Agarwal et al., ECCV 2020), per-sample form.

  What is implemented: greedy k-center (farthest-point) selection where the
  distance between samples i and j is the symmetric KL divergence of their
  softmax outputs, KL(p_i||p_j) + KL(p_j||p_i) = sum_k (p_ik - p_jk)(log p_ik
  - log p_jk). This is the paper's contextual-diversity distance with one
  prediction per image (the region pooling and entropy weighting of the
  original apply to multi-region/segmentation inputs), as used by DeepCore's
  image-classification baseline. Symmetric KL is not a metric, so the k-center
  2-approximation bound does not carry over. Per class when `balance`, seeded
  start, chunked distance evaluations.

  Args:
    logits: [N, K].
  """
  logits = _check_rows("logits", logits, labels, 2)
  rng = np.random.default_rng(seed)
  parts = []
  for members, k in _groups(labels, fraction, balance):
    logp = _log_softmax(logits[members])
    p = np.exp(logp)

    def sym_kl(j, p=p, logp=logp):
      out = np.empty((p.shape[0],), np.float64)
      for s in range(0, p.shape[0], chunk_size):
        e = slice(s, s + chunk_size)
        out[e] = np.einsum("nk,nk->n", p[e] - p[j], logp[e] - logp[j])
      return out

    start = int(rng.integers(len(members)))
    parts.append(members[_greedy_kcenter(sym_kl, len(members), k, start)])
  return _finish(parts)


def glister_val_split(labels: np.ndarray, val_fraction: float,
                      seed: int = 0) -> np.ndarray:
  """GLISTER's held-out split carved from the training samples.

  Stratified: round(val_fraction * n_c) samples of each class (>= 1 when
  val_fraction > 0), drawn with np.random.default_rng(seed).

  Returns:
    [N] bool mask of the held-out samples.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  labels = np.asarray(labels).reshape(-1)
  rng = np.random.default_rng(seed)
  is_val = np.zeros((labels.shape[0],), bool)
  if val_fraction == 0.0:
    return is_val
  for members, _ in _groups(labels, 1.0, True):
    v = min(len(members), max(1, int(np.round(val_fraction * len(members)))))
    is_val[rng.permutation(members)[:v]] = True
  return is_val


def glister(logits: np.ndarray, embedding: np.ndarray, *, labels: np.ndarray,
            fraction: float, balance: bool = True, seed: int = 0,
            val_fraction: float = 0.1, eta: float = 0.01,
            stochastic_eps: float | None = 0.01) -> np.ndarray:
  """GLISTER-online (Killamsetty et al., AAAI 2021), last-layer version.

  Approximation: only the classifier layer's parameters W = [weight | bias]
  ([K, D+1]) are considered. With p_i = softmax(logits_i), y_i one-hot and
  h_i = [embedding_i, 1], the cross-entropy gradient of sample i w.r.t. W is
  exactly g_i = (p_i - y_i) h_i^T (an outer product; earlier layers are
  ignored). The validation gradient G is the mean of g_j over a held-out split
  carved from the training samples (`glister_val_split`: stratified,
  `val_fraction` per class, seeded by `seed`); with balance=True each class
  is matched to its own class's validation samples.

  Greedy Taylor selection: at each step add the candidate with the largest
  first-order validation-loss decrease <g_i, G>, then take the step
  W <- W - eta * g_i, which changes validation logits exactly by
  -eta * (h_j . h_i) (p_i - y_i) (logits are linear in W), and recompute the
  validation softmax and G. Training gradients stay at the initial W, as in
  GLISTER. With `stochastic_eps` set, each step evaluates a random subset of
  ceil(n/k * ln(1/eps)) candidates (stochastic greedy, as GLISTER uses);
  None evaluates all. Held-out samples become candidates only once the other
  samples are exhausted (fraction close to 1).

  Args:
    logits: [N, K] student logits.
    embedding: [N, D] penultimate features.
    eta: step size of the Taylor update (roughly the training learning rate
      scaled to the embedding norm).

  Returns:
    Sorted int64 indices.
  """
  logits = _check_rows("logits", logits, labels, 2)
  emb = _check_rows("embedding", embedding, labels, 2)
  labels = np.asarray(labels)
  if stochastic_eps is not None and not 0.0 < stochastic_eps < 1.0:
    raise ValueError(f"stochastic_eps must be in (0, 1) or None, got "
                     f"{stochastic_eps}")
  is_val_all = glister_val_split(labels, val_fraction, seed)
  # A separate stream for stochastic greedy, so the split depends on the
  # seed alone.
  rng = np.random.default_rng((seed, 1))
  num_classes = logits.shape[1]
  y_all = np.asarray(labels, np.int64)
  if y_all.size and (y_all.min() < 0 or y_all.max() >= num_classes):
    raise ValueError("glister needs labels in [0, K)")
  parts = []
  for members, k in _groups(labels, fraction, balance):
    n = len(members)
    h = np.concatenate([np.asarray(emb[members], np.float64),
                        np.ones((n, 1))], axis=1)            # [n, D+1]
    a = np.exp(_log_softmax(logits[members]))
    a[np.arange(n), y_all[members]] -= 1.0                   # [n, K]
    is_val = is_val_all[members]
    hv = h[is_val]
    zv = np.asarray(logits[members][is_val], np.float64)     # [V, K]
    yv = y_all[members][is_val]

    def val_grad(zv, hv=hv, yv=yv):
      if zv.shape[0] == 0:
        return np.zeros((num_classes, hv.shape[1]))
      b = np.exp(_log_softmax(zv))
      b[np.arange(b.shape[0]), yv] -= 1.0
      return b.T @ hv / zv.shape[0]                          # [K, D+1]

    g_val = val_grad(zv)
    avail = ~is_val
    if not avail.any():
      avail = np.ones((n,), bool)
    val_opened = bool(avail.all())
    m = (math.ceil(avail.sum() / k * math.log(1.0 / stochastic_eps))
         if stochastic_eps else None)
    chosen = np.empty((k,), np.int64)
    for t in range(k):
      cand = np.flatnonzero(avail)
      if m is not None and m < cand.size:
        cand = np.sort(rng.choice(cand, size=m, replace=False))
      gains = np.einsum("nk,nk->n", a[cand], h[cand] @ g_val.T)
      j = int(cand[np.argmax(gains)])
      chosen[t] = j
      avail[j] = False
      if not avail.any() and not val_opened:
        avail = is_val.copy()
        avail[chosen[:t + 1]] = False
        val_opened = True
      if hv.shape[0]:
        zv -= eta * np.outer(hv @ h[j], a[j])
        g_val = val_grad(zv)
    parts.append(members[chosen])
  return _finish(parts)


def _uncertainty_check(logits, labels) -> np.ndarray:
  return _log_softmax(_check_rows("logits", logits, labels, 2))


def least_confidence(logits: np.ndarray, *, labels: np.ndarray,
                     fraction: float, balance: bool = True) -> np.ndarray:
  """Most uncertain by 1 - max_k p_k. logits: [N, K]."""
  p = np.exp(_uncertainty_check(logits, labels))
  return select_top_fraction(1.0 - p.max(axis=1), labels, fraction, balance)


def margin(logits: np.ndarray, *, labels: np.ndarray, fraction: float,
           balance: bool = True) -> np.ndarray:
  """Most uncertain by the smallest top-1 minus top-2 probability margin.
  logits: [N, K], K >= 2."""
  logits = np.asarray(logits)
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(f"margin needs [N, K>=2] logits, got {logits.shape}")
  p = np.exp(_uncertainty_check(logits, labels))
  top2 = np.partition(p, -2, axis=1)[:, -2:]
  return select_top_fraction(-(top2[:, 1] - top2[:, 0]), labels, fraction,
                             balance)


def entropy(logits: np.ndarray, *, labels: np.ndarray, fraction: float,
            balance: bool = True) -> np.ndarray:
  """Most uncertain by predictive entropy -sum_k p_k log p_k. logits: [N, K]."""
  logp = _uncertainty_check(logits, labels)
  return select_top_fraction(-(np.exp(logp) * logp).sum(axis=1), labels,
                             fraction, balance)


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selector:
  """A registered selection method with a uniform calling convention.

  Attributes:
    name: registry name.
    fn: the selector function (None for "acs": use `selector.acs_select`).
    needs: per-sample input arrays it reads, passed by these keyword names:
      "evs", "ds" [N], "logits" [N, K], "embedding" [N, D] (all from
      `scores.score_dataset`) or "forgetting_counts" [N] (from a
      `ForgettingTracker` updated on training minibatches).
    mode: "adaptive" (re-select every R epochs), "one_shot" (select once
      after warm-up) or "full" (no selection).
    seeded: whether `seed` is forwarded.
  """
  name: str
  fn: Callable[..., np.ndarray] | None
  needs: tuple[str, ...]
  mode: str
  seeded: bool = False

  def __call__(self, inputs: Mapping[str, np.ndarray] | None = None, *,
               labels: np.ndarray, fraction: float, balance: bool = True,
               seed: int = 0, **options: Any) -> np.ndarray:
    """Selects indices.

    Args:
      inputs: dict holding (at least) the arrays named in `needs`.
      labels: [N] labels.
      fraction: kept fraction in (0, 1].
      balance: per-class budgets.
      seed: forwarded to randomised methods, ignored otherwise.
      **options: method-specific keywords (e.g. epoch, total_epochs,
        schedule for "acs"; val_fraction, eta for "glister").

    Returns:
      Sorted unique int64 indices.
    """
    if self.fn is None:
      raise ValueError(f"selector {self.name!r} selects through "
                       "selector.acs_select (it returns the SelectionRecord)")
    inputs = dict(inputs or {})
    missing = [k for k in self.needs if k not in inputs]
    if missing:
      raise ValueError(f"selector {self.name!r} needs inputs {self.needs}; "
                       f"missing {missing}")
    kwargs = {k: inputs[k] for k in self.needs}
    if self.seeded:
      kwargs["seed"] = seed
    return self.fn(**kwargs, labels=labels, fraction=fraction,
                   balance=balance, **options)


SELECTORS: dict[str, Selector] = {
    s.name: s for s in (
        Selector("acs", None, ("evs", "ds"), "adaptive"),
        Selector("full", full, (), "full"),
        Selector("random", random_subset, (), "one_shot", seeded=True),
        Selector("el2n", el2n, ("evs",), "one_shot"),
        Selector("forgetting", forgetting, ("forgetting_counts",),
                 "one_shot"),
        Selector("kcenter", kcenter_greedy, ("embedding",), "one_shot",
                 seeded=True),
        Selector("moderate", moderate, ("embedding",), "one_shot"),
        Selector("contextual_diversity", contextual_diversity, ("logits",),
                 "one_shot", seeded=True),
        Selector("glister", glister, ("logits", "embedding"), "one_shot",
                 seeded=True),
        Selector("least_confidence", least_confidence, ("logits",),
                 "one_shot"),
        Selector("margin", margin, ("logits",), "one_shot"),
        Selector("entropy", entropy, ("logits",), "one_shot"),
    )
}

def get_selector(name: str) -> Selector:
  """The registered selector `name`; ValueError listing valid names if not."""
  try:
    return SELECTORS[name]
  except KeyError:
    raise ValueError(f"unknown coreset selector {name!r}; valid: "
                     f"{', '.join(SELECTORS)}") from None
