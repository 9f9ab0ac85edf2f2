"""Adaptive coreset selection: schedules, top-fraction selection, records.

NumPy only (no jax): selection runs on host on the scores gathered by
`acs_jax.coreset.scores.score_dataset`, and every function here is
deterministic (stable sorts; ties go to the lower sample index).

ACS score of sample i at epoch t (arXiv 2306.07215, Eq. 6):

    acs_i(t) = beta(t) * EVS_i + (1 - beta(t)) * DS_i,

so early in training the coreset favours samples the student gets wrong (EVS)
and later those where it disagrees with the full-precision teacher (DS).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

SCHEDULES = ("cosine", "raised_cosine", "linear", "quadratic", "sqrt",
             "evs_only", "ds_only", "constant")

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def acs_coefficient(epoch: float, total_epochs: float, schedule: str,
                    constant: float | None = None) -> float:
  """beta(t), the weight of EVS in the ACS score (DS gets 1 - beta).

  With t = epoch and E = total_epochs:

  * "cosine" (the paper): cos(pi * t / (2E)); 1 -> 0.
  * "raised_cosine" (the official code's default curve):
    0.5 * (1 + cos(pi * t / E)); 1 -> 0.
  * "linear": 1 - t/E.
  * "quadratic": 1 - (t/E)^2.
  * "sqrt": 1 - sqrt(t/E).
  * "evs_only": 1.   * "ds_only": 0.
  * "constant": `constant`, a value in [0, 1].

  The official code names its options the other way round (a name there
  does not describe the curve it produces); here every name says literally
  what beta(t) does.

  Args:
    epoch: t, in [0, total_epochs].
    total_epochs: E > 0.
    schedule: one of SCHEDULES.
    constant: beta for schedule "constant" (required there, else ignored).

  Returns:
    beta as a Python float in [0, 1].

  Raises:
    ValueError: unknown schedule, bad epoch range or constant.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown ACS schedule {schedule!r}; valid: "
                     f"{', '.join(SCHEDULES)}")
  if not total_epochs > 0:
    raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
  if not 0 <= epoch <= total_epochs:
    raise ValueError(f"epoch must be in [0, total_epochs={total_epochs}], "
                     f"got {epoch}")
  r = float(epoch) / float(total_epochs)
  if schedule == "cosine":
    return math.cos(math.pi * r / 2.0)
  if schedule == "raised_cosine":
    return 0.5 * (1.0 + math.cos(math.pi * r))
  if schedule == "linear":
    return 1.0 - r
  if schedule == "quadratic":
    return 1.0 - r * r
  if schedule == "sqrt":
    return 1.0 - math.sqrt(r)
  if schedule == "evs_only":
    return 1.0
  if schedule == "ds_only":
    return 0.0
  # "constant"
  if constant is None or not 0.0 <= float(constant) <= 1.0:
    raise ValueError("schedule 'constant' needs constant in [0, 1], got "
                     f"{constant}")
  return float(constant)


def check_fraction(fraction: float) -> float:
  """Returns `fraction` as a float; ValueError unless it is in (0, 1]."""
  f = float(fraction)
  if not 0.0 < f <= 1.0:  # also rejects NaN
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  return f


def class_budgets(counts: np.ndarray, fraction: float) -> np.ndarray:
  """Per-class budgets: round-half-to-even(fraction * n_c), >= 1 if n_c > 0.

  Args:
    counts: [C] class sizes n_c.
    fraction: in (0, 1].

  Returns:
    [C] int64 budgets (0 for empty classes).
  """
  f = check_fraction(fraction)
  counts = np.asarray(counts, np.int64)
  k = np.round(f * counts).astype(np.int64)  # np.round: half to even
  return np.where(counts > 0, np.maximum(k, 1), 0)


def _validate_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores)
  y = np.asarray(labels)
  if s.ndim != 1 or y.shape != s.shape:
    raise ValueError(f"scores {s.shape} and labels {y.shape} must be equal "
                     "1-D shapes")
  # float64 before negating: unsigned or bool scores would wrap otherwise.
  s = s.astype(np.float64)
  if np.isnan(s).any():
    raise ValueError("scores contain NaN")
  return s, y


def _excluded_mask(excluded, n: int) -> np.ndarray | None:
  if excluded is None:
    return None
  e = np.asarray(excluded)
  if e.dtype != np.bool_ or e.shape != (n,):
    raise ValueError(f"excluded must be a boolean [N={n}] mask, got "
                     f"{e.dtype} {e.shape}")
  return e


def select_top_fraction(scores: np.ndarray, labels: np.ndarray,
                        fraction: float, balance: bool = True,
                        excluded: np.ndarray | None = None) -> np.ndarray:
  """Indices of the highest-scoring samples.

  Args:
    scores: [N] scores (higher = keep; +inf allowed, NaN not).
    labels: [N] class labels (any integer values).
    fraction: kept fraction in (0, 1].
    balance: True: per class c of n_c samples keep the
      round-half-to-even(fraction * n_c) best (>= 1 for a non-empty class).
      False: keep round(fraction * N) best overall (>= 1).
    excluded: optional [N] bool mask. Excluded samples rank below every
      other sample of their group (class, or all when not balanced), so they
      are kept only where the budget exceeds the group's other samples; the
      budgets do not change.

  Returns:
    Sorted unique int64 indices. Ties go to the lower index.

  Raises:
    ValueError: fraction outside (0, 1], shape mismatch or NaN scores.
  """
  f = check_fraction(fraction)
  s, y = _validate_scores(scores, labels)
  n = s.shape[0]
  excluded = _excluded_mask(excluded, n)
  if n == 0:
    return np.zeros((0,), np.int64)
  order = np.argsort(-s, kind="stable")  # best first, ties -> lower index
  if excluded is not None:  # the others first, score order kept in each part
    order = order[np.argsort(excluded[order], kind="stable")]
  if not balance:
    k = max(1, int(np.round(f * n)))
    return np.sort(order[:k]).astype(np.int64)
  classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
  inv = inv.reshape(-1)
  # Group by class keeping the score order inside each class (stable sort).
  grouped = order[np.argsort(inv[order], kind="stable")]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.arange(n) - starts[inv[grouped]]
  budgets = class_budgets(counts, f)
  keep = grouped[rank < budgets[inv[grouped]]]
  return np.sort(keep).astype(np.int64)


def _stats(x: np.ndarray) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  if x.size == 0:
    return {"mean": float("nan"), **{f"q{int(q * 100)}": float("nan")
                                     for q in QUANTILES}}
  qs = np.quantile(x, QUANTILES)
  return {"mean": float(x.mean()),
          **{f"q{int(q * 100)}": float(v) for q, v in zip(QUANTILES, qs)}}


@dataclasses.dataclass
class SelectionRecord:
  """What one selection round chose and why (for logs and reproducibility).

  Attributes:
    epoch: epoch at which the selection was made.
    beta: EVS weight used.
    schedule: schedule name.
    fraction: kept fraction.
    balance: whether budgets were per class.
    num_samples: N.
    indices: [M] sorted int64 selected indices (saved as .npy, not in JSON).
    class_counts: label -> number of selected samples of that class.
    class_sizes: label -> number of samples of that class.
    score_stats: name -> {"mean", "q0", "q25", "q50", "q75", "q100"} for
      "evs", "ds", "acs" (all samples) and "acs_selected".
    num_excluded: how many samples were excluded from the candidates (None:
      no exclusion asked; see `acs_select`).
    num_excluded_selected: how many of those were still selected (classes
      whose budget exceeds their other samples).
  """
  epoch: int
  beta: float
  schedule: str
  fraction: float
  balance: bool
  num_samples: int
  indices: np.ndarray
  class_counts: dict[int, int]
  class_sizes: dict[int, int]
  score_stats: dict[str, dict[str, float]]
  num_excluded: int | None = None
  num_excluded_selected: int | None = None

  def to_json_dict(self) -> dict[str, Any]:
    """JSON-serialisable summary without the index array."""
    excluded = ({} if self.num_excluded is None else
                {"num_excluded": int(self.num_excluded),
                 "num_excluded_selected": int(self.num_excluded_selected)})
    return {
        **excluded,
        "epoch": int(self.epoch),
        "beta": float(self.beta),
        "schedule": self.schedule,
        "fraction": float(self.fraction),
        "balance": bool(self.balance),
        "num_samples": int(self.num_samples),
        "num_selected": int(len(self.indices)),
        "class_counts": {str(k): int(v) for k, v in self.class_counts.items()},
        "class_sizes": {str(k): int(v) for k, v in self.class_sizes.items()},
        "score_stats": self.score_stats,
    }

  def save(self, directory: str, prefix: str = "selection") -> tuple[str, str]:
    """Writes `<prefix>_epoch<epoch>.json` and `.npy` (indices) files.

    Returns:
      (json_path, npy_path).
    """
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, f"{prefix}_epoch{int(self.epoch):04d}")
    with open(stem + ".json", "w") as f:
      json.dump(self.to_json_dict(), f, indent=2, sort_keys=True)
    np.save(stem + ".npy", np.asarray(self.indices, np.int64))
    return stem + ".json", stem + ".npy"

def teacher_errors(teacher_probs: np.ndarray, labels: np.ndarray
                   ) -> np.ndarray:
  """[N] bool: the teacher's top-1 ([N, C] probabilities) is not the label.

  Ties go to the lower class index (np.argmax)."""
  p = np.asarray(teacher_probs, np.float32)
  y = np.asarray(labels)
  if p.ndim != 2 or p.shape[0] != y.shape[0]:
    raise ValueError(f"teacher_probs {p.shape} must be [N, C] for labels "
                     f"{y.shape}")
  return np.argmax(p, axis=1) != y


def acs_scores(evs: np.ndarray, ds: np.ndarray, beta: float) -> np.ndarray:
  """beta * EVS + (1 - beta) * DS in float64. Shapes [N] -> [N]."""
  evs = np.asarray(evs, np.float64)
  ds = np.asarray(ds, np.float64)
  if evs.shape != ds.shape or evs.ndim != 1:
    raise ValueError(f"evs {evs.shape} and ds {ds.shape} must be equal 1-D "
                     "shapes")
  return beta * evs + (1.0 - beta) * ds


def acs_select(evs: np.ndarray, ds: np.ndarray, labels: np.ndarray, *,
               epoch: int, total_epochs: int, fraction: float, schedule: str,
               balance: bool = True, constant: float | None = None,
               excluded: np.ndarray | None = None
               ) -> tuple[np.ndarray, SelectionRecord]:
  """One ACS selection round.

  Args:
    evs: [N] error vector scores.
    ds: [N] disagreement scores.
    labels: [N] labels.
    epoch: current epoch t.
    total_epochs: E.
    fraction: kept fraction in (0, 1].
    schedule: beta schedule (see `acs_coefficient`).
    balance: per-class budgets (see `select_top_fraction`).
    constant: beta for schedule "constant".
    excluded: optional [N] bool mask of samples ranked after all others of
      their class (see `select_top_fraction`), e.g. those the teacher
      misclassifies (config.coreset.exclude_teacher_errors).

  Returns:
    (indices [M] sorted int64, SelectionRecord).
  """
  beta = acs_coefficient(epoch, total_epochs, schedule, constant)
  score = acs_scores(evs, ds, beta)
  labels = np.asarray(labels)
  idx = select_top_fraction(score, labels, fraction, balance, excluded)
  classes, sizes = np.unique(labels, return_counts=True)
  sel_classes, sel_counts = np.unique(labels[idx], return_counts=True)
  class_counts = {int(c): 0 for c in classes}
  class_counts.update({int(c): int(n) for c, n in zip(sel_classes, sel_counts)})
  record = SelectionRecord(
      epoch=int(epoch), beta=float(beta), schedule=schedule,
      fraction=float(fraction), balance=bool(balance),
      num_samples=int(score.shape[0]), indices=idx,
      class_counts=class_counts,
      class_sizes={int(c): int(n) for c, n in zip(classes, sizes)},
      score_stats={"evs": _stats(evs), "ds": _stats(ds), "acs": _stats(score),
                   "acs_selected": _stats(score[idx])})
  if excluded is not None:
    record.num_excluded = int(np.sum(excluded))
    record.num_excluded_selected = int(np.sum(excluded[idx]))
  return idx, record
