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


class _Labels:
  num_classes = 3

  def __init__(self, labels):
    self._labels = labels

  def train_labels(self):
    return self._labels


@pytest.mark.parametrize("exclude", [False, True])
def test_acs_selection_leaves_out_teacher_errors_when_asked(exclude, tmp_path):
  from acs_jax import config_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = 60
  labels = rng.integers(0, 3, n)
  teacher_probs = rng.dirichlet(np.ones(3), size=n)
  right = rng.random(n) < 0.7  # a teacher right on most images
  teacher_probs[right, labels[right]] += 1.0
  teacher_probs = (teacher_probs / teacher_probs.sum(1, keepdims=True)
                   ).astype(np.float32)
  wrong = np.array([int(np.argmax(p)) != y
                    for p, y in zip(teacher_probs, labels)])
  evs, ds = rng.random(n), rng.random(n)
  evs[wrong] += 10.0  # the teacher's errors score highest
  config = config_lib.get_base_config()
  config.train.epochs = 10
  config.coreset.update(selector="acs", fraction=0.25, schedule="evs_only",
                        exclude_teacher_errors=exclude)
  sched = schedule.CoresetSchedule(
      config, _Labels(labels), score_fn=None, teacher_apply=None,
      teacher_variables=None, mesh=None, workdir=str(tmp_path), writer=None,
      score_batch_size=8, selection_seed=lambda epoch: epoch)
  sched.teacher_probs = teacher_probs
  idx, record = sched._select(0, {"evs": evs, "ds": ds})
  budgets = np.round(0.25 * np.bincount(labels)).astype(int)
  want = []
  for c in range(3):  # per class: the budget's best, teacher errors last
    members = [i for i in range(n) if labels[i] == c]
    key = lambda i: ((exclude and wrong[i]), -evs[i], i)
    want += sorted(members, key=key)[:budgets[c]]
  np.testing.assert_array_equal(idx, sorted(want))
  assert wrong.sum() > 0 and (wrong[idx].sum() == 0) == exclude
  if exclude:
    assert record["num_excluded"] == wrong.sum()
    assert record["num_excluded_selected"] == 0
  else:
    assert "num_excluded" not in record
  np.testing.assert_array_equal(
      np.load(tmp_path / "selections" / "selection_epoch0000.npy"), idx)
