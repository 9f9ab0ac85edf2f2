"""Tests for acs_jax.coreset.schedule's pure pieces (the driver itself runs in
train_test, checkpoint_test and sweep_test)."""
import ml_collections
import numpy as np
import pytest

from acs_jax.coreset import schedule


def _epochs(total, **kw):
  return [e for e in range(total) if schedule.is_selection_epoch(e, **kw)]


def test_selection_epochs_adaptive_one_shot_full():
  assert _epochs(10, mode="adaptive", adaptive=True, warmup=0,
                 every=3) == [0, 3, 6, 9]
  assert _epochs(10, mode="adaptive", adaptive=True, warmup=0,
                 every=20) == [0]
  assert _epochs(10, mode="one_shot", adaptive=False, warmup=2,
                 every=3) == [2]
  # An adaptive baseline counts R from the end of its warm-up.
  assert _epochs(10, mode="one_shot", adaptive=True, warmup=2,
                 every=3) == [2, 5, 8]
  assert _epochs(10, mode="full", adaptive=True, warmup=0, every=1) == []


@pytest.mark.parametrize("selector,adaptive,want", [
    ("acs", "auto", True), ("acs", "no", False), ("kcenter", "auto", False),
    ("random", "yes", True)])
def test_is_adaptive(selector, adaptive, want):
  c = ml_collections.ConfigDict({"selector": selector, "adaptive": adaptive})
  assert schedule.is_adaptive(c) is want


def test_coreset_size_matches_per_class_rounding():
  labels = np.repeat(np.arange(3), [10, 25, 5])
  # round-half-to-even per class: 10*.1=1, 25*.1=2.5->2, 5*.1=.5->0 -> >=1.
  assert schedule.coreset_size(labels, 0.1, balance=True) == 1 + 2 + 1
  assert schedule.coreset_size(labels, 0.1, balance=False) == 4
  assert schedule.coreset_size(labels, 1.0, balance=True) == 40
  c = ml_collections.ConfigDict({"selector": "full", "fraction": 0.1,
                                 "balance": True})
  assert schedule.epoch_data_size(c, labels) == 40
  c.selector = "acs"
  assert schedule.epoch_data_size(c, labels) == 4
