"""The re-selection driver: which samples the student trains on, per epoch.

`CoresetSchedule(epoch, state)` returns the epoch's sample indices. At a
selection epoch (`is_selection_epoch`) it runs the score pass over the whole
training set (`scores.score_dataset`: one student forward pass; the teacher's
softmax is computed once per run and cached on the host), then the selector:
ACS (`selector.acs_select`, which also returns the SelectionRecord with beta
and the score statistics) or a baseline of `baselines.SELECTORS`. Every
selection is written to WORKDIR/selections/ and to the metrics. Its state
(current indices, the last scores, beta, a forgetting tracker) goes into the
run's checkpoints through state_dict()/load_state_dict().
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from acs_jax import sharding
from acs_jax.coreset import baselines
from acs_jax.coreset import scores as scores_lib
from acs_jax.coreset import selector as selector_lib
from acs_jax.data import input_pipeline
from acs_jax.metrics import MetricsWriter, progress

_SCORED = ("evs", "ds", "logits", "embedding")  # what score_dataset returns
# config.coreset.adaptive: the selector's own protocol, or forced on / off.
ADAPTIVE = ("auto", "yes", "no")


def coreset_size(labels: np.ndarray, fraction: float, balance: bool) -> int:
  """How many samples a selection at `fraction` keeps (per-class rounding)."""
  if fraction >= 1.0:
    return len(labels)
  if balance:
    counts = np.bincount(labels)
    return int(np.sum(selector_lib.class_budgets(counts[counts > 0],
                                                 fraction)))
  return max(1, int(np.round(fraction * len(labels))))


def epoch_data_size(coreset_config, labels: np.ndarray) -> int:
  """Samples per QAT epoch: the coreset size, or all for selector "full"."""
  sel = baselines.get_selector(coreset_config.selector)
  if sel.mode == "full":
    return len(labels)
  return coreset_size(labels, coreset_config.fraction, coreset_config.balance)


def is_adaptive(coreset_config) -> bool:
  """Whether the selector re-selects every R epochs (config.coreset)."""
  if coreset_config.adaptive == "auto":
    return baselines.get_selector(coreset_config.selector).mode == "adaptive"
  return coreset_config.adaptive == "yes"


def is_selection_epoch(epoch: int, *, mode: str, adaptive: bool, warmup: int,
                       every: int) -> bool:
  """Selection at the end of warm-up, then every `every` epochs if adaptive.

  `mode` is the selector's ("full" never selects).
  """
  if mode == "full":
    return False
  if epoch == warmup:
    return True
  return adaptive and epoch > warmup and (epoch - warmup) % every == 0


class CoresetSchedule:
  """Decides, per epoch, which samples the student trains on."""

  def __init__(self, config, dataset, score_fn: Callable, teacher_apply,
               teacher_variables, mesh, workdir: str, writer: MetricsWriter,
               score_batch_size: int, selection_seed: Callable[[int], int]):
    """
    Args:
      config: the run's config (coreset, train.epochs and seed are read).
      dataset: the run's `datasets.Dataset`.
      score_fn: the student's `scores.make_score_fn` function.
      teacher_apply: `(variables, images) -> logits`, the frozen teacher.
      teacher_variables: its variables (replicated on `mesh`).
      mesh: the device mesh.
      workdir: the run's directory (selections/ is written there).
      writer: the run's metrics writer.
      score_batch_size: global batch of the score pass.
      selection_seed: epoch -> seed of a randomised baseline's selection.
    """
    self.c = config.coreset
    self.dataset = dataset
    self.labels = np.asarray(dataset.train_labels(), np.int64)
    self.num_classes = dataset.num_classes
    self.n = len(self.labels)
    self.score_fn = score_fn
    self.mesh = mesh
    self.teacher_apply = teacher_apply
    self.teacher_variables = teacher_variables
    self.selector = baselines.get_selector(self.c.selector)
    self.adaptive = is_adaptive(self.c)
    self.sel_dir = os.path.join(workdir, "selections")
    self.writer = writer
    self.total_epochs = config.train.epochs
    self.score_batch = score_batch_size
    self.selection_seed = selection_seed
    self.indices = np.arange(self.n, dtype=np.int64)
    self.teacher_probs = None
    self.tracker = (baselines.ForgettingTracker(self.n)
                    if "forgetting_counts" in self.selector.needs else None)
    self.beta = None
    self.last_selection_epoch = -1
    self.last_scores: dict[str, np.ndarray] = {}  # the last pass's [N] scores

  def is_selection_epoch(self, epoch: int) -> bool:
    return is_selection_epoch(epoch, mode=self.selector.mode,
                              adaptive=self.adaptive,
                              warmup=self.c.warmup_epochs,
                              every=self.c.data_update_epochs)

  def _batches(self, desc: str):
    it = input_pipeline.make_eval_iterator(
        self.dataset, "train", batch_size=self.score_batch,
        process_index=jax.process_index(), process_count=jax.process_count())
    return progress(it, total=len(it), desc=desc, unit="batch", leave=False)

  def _score(self, state) -> dict[str, np.ndarray]:
    needs = tuple(k for k in self.selector.needs if k in _SCORED)
    if not needs:
      return {}
    if "ds" in needs and self.teacher_probs is None:
      t0 = time.time()
      self.teacher_probs = scores_lib.compute_teacher_probs(
          self.teacher_apply, self.teacher_variables, self._batches("teacher"),
          self.n, self.mesh)
      logging.info("Teacher softmax over %d training samples cached "
                   "(%s, %.1fs)", self.n, self.teacher_probs.dtype,
                   time.time() - t0)
    probs = self.teacher_probs
    if probs is None:  # DS unused: a zero-cost stand-in (zero strides).
      probs = np.broadcast_to(np.zeros((1, self.num_classes), np.float32),
                              (self.n, self.num_classes))
    return scores_lib.score_dataset(
        self.score_fn, {"params": state.params,
                        "batch_stats": state.batch_stats},
        self._batches("scoring"), self.n, self.mesh, teacher_probs=probs,
        keep=needs)

  def _select(self, epoch: int, inputs: dict) -> tuple[np.ndarray, dict]:
    """Runs the selector; saves the selection; returns (indices, record)."""
    record: dict[str, Any] = {"epoch": epoch, "selector": self.c.selector}
    if self.c.selector == "acs":
      idx, rec = selector_lib.acs_select(
          inputs["evs"], inputs["ds"], self.labels, epoch=epoch,
          total_epochs=self.total_epochs, fraction=self.c.fraction,
          schedule=self.c.schedule, balance=self.c.balance,
          constant=self.c.constant_beta, excluded=(
              selector_lib.teacher_errors(self.teacher_probs, self.labels)
              if self.c.exclude_teacher_errors else None))
      if sharding.is_primary():
        rec.save(self.sel_dir)
      self.beta = rec.beta
      record.update(rec.to_json_dict())
      return idx, record
    options = ({"val_fraction": self.c.glister_val_fraction}
               if self.c.selector == "glister" else {})
    idx = self.selector(inputs, labels=self.labels, fraction=self.c.fraction,
                        balance=self.c.balance,
                        seed=self.selection_seed(epoch), **options)
    record.update({"num_selected": int(len(idx)), "class_counts": np.bincount(
        self.labels[idx], minlength=self.num_classes).tolist()})
    if sharding.is_primary():
      os.makedirs(self.sel_dir, exist_ok=True)
      np.save(os.path.join(self.sel_dir, f"selection_epoch{epoch:04d}.npy"),
              idx)
    return idx, record

  def __call__(self, epoch: int, state) -> tuple[np.ndarray, dict]:
    extra = {}
    if self.is_selection_epoch(epoch):
      t0 = time.time()
      inputs = self._score(state)
      if self.tracker is not None:
        inputs["forgetting_counts"] = self.tracker.counts()
      t_score = time.time() - t0
      idx, record = self._select(epoch, inputs)
      self.indices = np.asarray(idx, np.int64)
      self.last_selection_epoch = epoch
      self.last_scores = {k: np.asarray(v, np.float32)
                          for k, v in inputs.items() if k in ("evs", "ds")}
      record["seconds_score"] = t_score
      record["seconds_select"] = time.time() - t0 - t_score
      self.writer.write_selection(record)
      extra["selected"] = True
    extra["beta"] = self.beta
    extra["coreset_size"] = int(len(self.indices))
    return self.indices, extra

  def state_dict(self) -> tuple[dict, dict]:
    """(numpy arrays, JSON scalars) that a checkpoint keeps."""
    arrays = {"indices": self.indices,
              **{f"last_{k}": v for k, v in self.last_scores.items()}}
    if self.tracker is not None:
      arrays.update({f"forgetting_{k}": v
                     for k, v in self.tracker.state_dict().items()})
    return arrays, {"beta": self.beta,
                    "last_selection_epoch": self.last_selection_epoch}

  def load_state_dict(self, arrays: dict, scalars: dict) -> None:
    self.indices = np.asarray(arrays["indices"], np.int64)
    self.beta = scalars.get("beta")
    self.last_selection_epoch = scalars.get("last_selection_epoch", -1)
    self.last_scores = {k[len("last_"):]: v for k, v in arrays.items()
                        if k.startswith("last_")}
    if self.tracker is not None:
      self.tracker = baselines.ForgettingTracker.from_state_dict(
          {k[len("forgetting_"):]: v for k, v in arrays.items()
           if k.startswith("forgetting_")})

  def on_epoch_end(self, epoch: int, correct_log) -> None:
    """Counts forgetting events on the warm-up epochs' training batches."""
    if self.tracker is None or epoch >= self.c.warmup_epochs:
      return
    for idx, correct in correct_log:
      self.tracker.update(sharding.to_host(idx), sharding.to_host(correct))
