"""Tests for acs_jax.coreset.selector (NumPy only)."""
import json
import math

import numpy as np
import pytest

from acs_jax.coreset import selector


def _naive_top_fraction(scores, labels, fraction, balance, excluded=None):
  """Pure-Python reference: sort (excluded, -score, index) per group, take
  the budget."""
  scores = [float(s) for s in scores]
  labels = [int(y) for y in labels]
  n = len(scores)
  out = [False] * n if excluded is None else [bool(e) for e in excluded]
  groups = ({c: [i for i in range(n) if labels[i] == c] for c in set(labels)}
            if balance else {None: list(range(n))})
  chosen = []
  for members in groups.values():
    k = max(1, round(fraction * len(members)))   # Python round: half to even
    chosen += sorted(members, key=lambda i: (out[i], -scores[i], i))[:k]
  return sorted(chosen)


def _random_case(rng):
  n = int(rng.integers(1, 120))
  num_classes = int(rng.integers(1, 8))
  # Imbalanced class frequencies (some classes tiny or absent).
  p = rng.dirichlet(np.full(num_classes, 0.5))
  labels = rng.choice(num_classes, size=n, p=p) * 3 - 2  # non-contiguous ids
  if rng.random() < 0.5:
    scores = rng.integers(0, 4, size=n).astype(np.float64)   # many ties
  else:
    scores = rng.normal(size=n)
  fraction = float(rng.choice([1.0, 0.5, 0.1, 0.25, 0.3, 0.75,
                               rng.uniform(1e-3, 1.0)]))
  return scores, labels, fraction


def test_select_top_fraction_matches_naive_reference():
  rng = np.random.default_rng(0)
  for _ in range(400):
    scores, labels, fraction = _random_case(rng)
    for balance in (True, False):
      got = selector.select_top_fraction(scores, labels, fraction, balance)
      assert got.dtype == np.int64
      np.testing.assert_array_equal(
          got, _naive_top_fraction(scores, labels, fraction, balance))


def test_excluded_samples_rank_last_matches_naive_reference():
  rng = np.random.default_rng(3)
  taken = 0
  for _ in range(300):
    scores, labels, fraction = _random_case(rng)
    excluded = rng.random(len(scores)) < rng.choice([0.0, 0.3, 0.9, 1.0])
    for balance in (True, False):
      got = selector.select_top_fraction(scores, labels, fraction, balance,
                                         excluded)
      np.testing.assert_array_equal(got, _naive_top_fraction(
          scores, labels, fraction, balance, excluded))
      taken += int(excluded[got].sum())
  assert taken > 0  # some cases had to fill budgets from the excluded


def test_excluded_mask_is_checked():
  with pytest.raises(ValueError, match="boolean"):
    selector.select_top_fraction(np.zeros(4), np.zeros(4, int), 0.5,
                                 excluded=np.zeros(4, int))
  with pytest.raises(ValueError, match="boolean"):
    selector.select_top_fraction(np.zeros(4), np.zeros(4, int), 0.5,
                                 excluded=np.zeros(3, bool))


def test_teacher_errors_against_a_loop():
  rng = np.random.default_rng(4)
  probs = rng.dirichlet(np.ones(5), size=200).astype(np.float32)
  probs[:20] = 0.2  # all tied: class 0 is the prediction
  labels = rng.integers(0, 5, 200)
  want = [int(max(range(5), key=lambda c: (probs[i, c], -c))) != labels[i]
          for i in range(200)]
  np.testing.assert_array_equal(selector.teacher_errors(probs, labels), want)
  with pytest.raises(ValueError, match=r"\[N, C\]"):
    selector.teacher_errors(probs[:, 0], labels)


def test_select_top_fraction_edge_cases():
  # Tiny classes: 1 and 2 samples still get >= 1 each.
  labels = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
  scores = np.arange(13, dtype=np.float64)
  got = selector.select_top_fraction(scores, labels, 0.1)
  np.testing.assert_array_equal(got, [0, 2, 12])
  # (0.1 * 2 = 0.2 -> 0 -> clamped to 1 above.) Half to even: 2.5 -> 2.
  got = selector.select_top_fraction(np.zeros(5), np.zeros(5, int), 0.5)
  np.testing.assert_array_equal(got, [0, 1])   # ties -> lower index
  got = selector.select_top_fraction(np.zeros(7), np.zeros(7, int), 0.5)
  np.testing.assert_array_equal(got, [0, 1, 2, 3])   # 3.5 -> 4
  # fraction = 1 keeps everything; +inf scores are allowed.
  s = np.array([np.inf, 1.0, np.inf, -np.inf])
  np.testing.assert_array_equal(
      selector.select_top_fraction(s, np.zeros(4, int), 1.0), [0, 1, 2, 3])
  np.testing.assert_array_equal(
      selector.select_top_fraction(s, np.zeros(4, int), 0.5), [0, 2])
  # Unsigned scores are not wrapped by negation.
  np.testing.assert_array_equal(
      selector.select_top_fraction(np.array([1, 5, 3], np.uint8),
                                   np.zeros(3, int), 0.34), [1])
  assert selector.select_top_fraction(np.zeros(0), np.zeros(0, int),
                                      0.5).shape == (0,)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0001, 2, float("nan")])
def test_select_top_fraction_rejects_bad_fraction(fraction):
  with pytest.raises(ValueError, match=r"fraction.*\(0, 1\]"):
    selector.select_top_fraction(np.zeros(4), np.zeros(4, int), fraction)


def test_select_top_fraction_rejects_nan_and_shapes():
  with pytest.raises(ValueError, match="NaN"):
    selector.select_top_fraction(np.array([0.0, np.nan]), np.zeros(2), 0.5)
  with pytest.raises(ValueError, match="1-D"):
    selector.select_top_fraction(np.zeros(3), np.zeros(4), 0.5)


_R2 = math.sqrt(2) / 2
_EXPECTED = {  # schedule: beta at t = 0, E/2, E
    "cosine": (1.0, _R2, 0.0),
    "raised_cosine": (1.0, 0.5, 0.0),
    "linear": (1.0, 0.5, 0.0),
    "quadratic": (1.0, 0.75, 0.0),
    "sqrt": (1.0, 1.0 - _R2, 0.0),
    "evs_only": (1.0, 1.0, 1.0),
    "ds_only": (0.0, 0.0, 0.0),
    "constant": (0.3, 0.3, 0.3),
}


@pytest.mark.parametrize("schedule", selector.SCHEDULES)
def test_schedules_at_0_half_and_end(schedule):
  total = 120
  got = [selector.acs_coefficient(t, total, schedule, constant=0.3)
         for t in (0, total // 2, total)]
  assert got == pytest.approx(_EXPECTED[schedule], abs=1e-12)


def test_schedule_errors_and_coverage():
  assert set(_EXPECTED) == set(selector.SCHEDULES)
  with pytest.raises(ValueError, match="cosine.*raised_cosine"):
    selector.acs_coefficient(0, 10, "cosin")
  with pytest.raises(ValueError, match="constant"):
    selector.acs_coefficient(0, 10, "constant")
  with pytest.raises(ValueError, match="constant"):
    selector.acs_coefficient(0, 10, "constant", constant=1.5)
  with pytest.raises(ValueError, match="epoch"):
    selector.acs_coefficient(11, 10, "linear")


def test_acs_select_and_record(tmp_path):
  rng = np.random.default_rng(1)
  n = 50
  evs, ds = rng.random(n), rng.random(n)
  labels = rng.integers(0, 3, n)
  idx, rec = selector.acs_select(evs, ds, labels, epoch=30, total_epochs=120,
                                 fraction=0.2, schedule="linear")
  beta = 0.75
  np.testing.assert_array_equal(
      idx, _naive_top_fraction(beta * evs + (1 - beta) * ds, labels, 0.2,
                               True))
  assert rec.beta == pytest.approx(beta)
  assert sum(rec.class_counts.values()) == len(idx)
  assert rec.class_sizes == {c: int((labels == c).sum()) for c in range(3)}
  assert rec.score_stats["acs"]["q0"] == pytest.approx(
      (beta * evs + (1 - beta) * ds).min())
  assert rec.score_stats["evs"]["mean"] == pytest.approx(evs.mean())
  d = rec.to_json_dict()
  text = json.dumps(d)
  assert "indices" not in d and len(text) < 4000
  js, npy = rec.save(str(tmp_path))
  np.testing.assert_array_equal(np.load(npy), idx)
  with open(js) as f:
    assert json.load(f) == json.loads(text)
  assert "num_excluded" not in d
  excluded = np.zeros(n, bool)
  excluded[labels == 0] = True  # a whole class: its budget comes from them
  excluded[np.flatnonzero(labels == 1)[:3]] = True
  idx_x, rec_x = selector.acs_select(evs, ds, labels, epoch=30,
                                     total_epochs=120, fraction=0.2,
                                     schedule="linear", excluded=excluded)
  np.testing.assert_array_equal(idx_x, _naive_top_fraction(
      beta * evs + (1 - beta) * ds, labels, 0.2, True, excluded))
  assert rec_x.to_json_dict()["num_excluded"] == excluded.sum()
  assert rec_x.to_json_dict()["num_excluded_selected"] == (
      excluded[idx_x].sum()) == rec_x.class_counts[0]
  # DS only at the end of a cosine schedule.
  idx_end, _ = selector.acs_select(evs, ds, labels, epoch=120,
                                   total_epochs=120, fraction=0.2,
                                   schedule="cosine")
  np.testing.assert_array_equal(
      idx_end, selector.select_top_fraction(ds, labels, 0.2))
