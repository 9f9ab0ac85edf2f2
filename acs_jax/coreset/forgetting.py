"""Forgetting-event tracking (Toneva et al., ICLR 2019), NumPy only.

A forgetting event for sample i is a transition from "classified correctly"
to "misclassified" between two consecutive times the sample is seen (normally
once per epoch, from the training minibatches). Samples that were never
classified correctly count as the most forgettable (infinitely many events),
as in the paper.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class ForgettingTracker:
  """Per-sample forgetting-event counts with checkpointable numpy state.

  State (all [N] numpy arrays): `prev_correct` (bool, last observation),
  `ever_correct` (bool), `forgetting_events` (int64) and `num_updates`
  (int64, times the sample was observed).
  """

  _FIELDS = ("prev_correct", "ever_correct", "forgetting_events",
             "num_updates")

  def __init__(self, num_samples: int):
    n = int(num_samples)
    if n < 0:
      raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    self.num_samples = n
    self.prev_correct = np.zeros((n,), bool)
    self.ever_correct = np.zeros((n,), bool)
    self.forgetting_events = np.zeros((n,), np.int64)
    self.num_updates = np.zeros((n,), np.int64)

  def update(self, indices: np.ndarray, correct: np.ndarray) -> None:
    """Records one observation of each sample in `indices`.

    Args:
      indices: [M] int sample indices, unique within the call (drop padded /
        masked rows before calling).
      correct: [M] bool, whether each sample was classified correctly.

    Raises:
      ValueError: shape mismatch, index out of range or repeated.
    """
    idx = np.asarray(indices, np.int64).reshape(-1)
    ok = np.asarray(correct, bool).reshape(-1)
    if idx.shape != ok.shape:
      raise ValueError(f"indices {idx.shape} and correct {ok.shape} differ")
    if idx.size == 0:
      return
    if idx.min() < 0 or idx.max() >= self.num_samples:
      raise ValueError(f"indices must be in [0, {self.num_samples})")
    if np.unique(idx).size != idx.size:
      raise ValueError("indices must be unique within one update")
    # A transition correct -> incorrect; the first observation has no
    # predecessor (prev_correct starts False), so it never counts.
    forgot = self.prev_correct[idx] & ~ok
    self.forgetting_events[idx] += forgot
    self.prev_correct[idx] = ok
    self.ever_correct[idx] |= ok
    self.num_updates[idx] += 1

  def counts(self, never_learned: float = np.inf) -> np.ndarray:
    """[N] float64 forgetting counts; never-learned samples get `never_learned`
    (default +inf: the most forgettable, as in Toneva et al.)."""
    c = self.forgetting_events.astype(np.float64)
    return np.where(self.ever_correct, c, never_learned)

  def state_dict(self) -> dict[str, np.ndarray]:
    return {k: getattr(self, k).copy() for k in self._FIELDS}

  @classmethod
  def from_state_dict(cls, state: Mapping[str, np.ndarray]
                      ) -> "ForgettingTracker":
    n = int(np.asarray(state["prev_correct"]).shape[0])
    tracker = cls(n)
    tracker.prev_correct = np.asarray(state["prev_correct"], bool).copy()
    tracker.ever_correct = np.asarray(state["ever_correct"], bool).copy()
    tracker.forgetting_events = np.asarray(state["forgetting_events"],
                                           np.int64).copy()
    tracker.num_updates = np.asarray(state["num_updates"], np.int64).copy()
    return tracker
