"""Tests for acs_jax.coreset.baselines and the forgetting tracker."""
import itertools

import numpy as np
import pytest

from acs_jax.coreset import baselines
from acs_jax.coreset import selector
from acs_jax.coreset.forgetting import ForgettingTracker


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _inputs(rng, n=150, num_classes=5, dim=4):
  # Imbalanced labels including a 1-sample and a 2-sample class.
  labels = rng.choice(num_classes - 2, size=n - 3, p=[0.6, 0.3, 0.1])
  labels = np.concatenate([labels, [num_classes - 2, num_classes - 1,
                                    num_classes - 1]])
  logits = rng.normal(size=(n, num_classes)) * 2
  return labels, {
      "evs": rng.random(n), "ds": rng.random(n), "logits": logits,
      "embedding": rng.normal(size=(n, dim)),
      "forgetting_counts": rng.integers(0, 3, n).astype(np.float64),
  }


@pytest.mark.parametrize("name", sorted(set(baselines.SELECTORS) - {"acs"}))
def test_contract_counts_sorted_unique_deterministic(name):
  rng = np.random.default_rng(0)
  labels, inputs = _inputs(rng)
  sel = baselines.get_selector(name)
  opts = {}
  for fraction in (0.2, 0.5):
    for balance in (True, False):
      idx = sel(inputs, labels=labels, fraction=fraction, balance=balance,
                seed=3, **opts)
      assert idx.dtype == np.int64
      assert np.all(np.diff(idx) > 0), "sorted and unique"
      assert idx.min() >= 0 and idx.max() < len(labels)
      if name == "full":
        np.testing.assert_array_equal(idx, np.arange(len(labels)))
        continue
      if balance:
        classes, sizes = np.unique(labels, return_counts=True)
        want = selector.class_budgets(sizes, fraction)
        got = np.array([(labels[idx] == c).sum() for c in classes])
        np.testing.assert_array_equal(got, want)
      else:
        assert len(idx) == max(1, round(fraction * len(labels)))
      again = sel(inputs, labels=labels, fraction=fraction, balance=balance,
                  seed=3, **opts)
      np.testing.assert_array_equal(idx, again)


def test_registry():
  assert set(baselines.SELECTORS) == {
      "acs", "full", "random", "el2n", "forgetting", "kcenter", "moderate",
      "contextual_diversity", "glister", "least_confidence", "margin",
      "entropy"}
  needs = {n: s.needs for n, s in baselines.SELECTORS.items()}
  assert needs["glister"] == ("logits", "embedding")
  assert needs["kcenter"] == ("embedding",)
  assert needs["acs"] == ("evs", "ds")
  modes = {n: s.mode for n, s in baselines.SELECTORS.items()}
  assert modes.pop("acs") == "adaptive" and modes.pop("full") == "full"
  assert set(modes.values()) == {"one_shot"}
  with pytest.raises(ValueError, match="acs_select"):
    baselines.get_selector("acs")({}, labels=np.zeros(3), fraction=0.5)
  with pytest.raises(ValueError, match="unknown.*kcenter.*glister"):
    baselines.get_selector("craig")
  with pytest.raises(ValueError, match="missing"):
    baselines.get_selector("kcenter")({}, labels=np.zeros(3), fraction=0.5)


def test_random_is_seeded():
  labels = np.repeat(np.arange(4), 50)
  a = baselines.random_subset(labels=labels, fraction=0.3, seed=0)
  b = baselines.random_subset(labels=labels, fraction=0.3, seed=0)
  c = baselines.random_subset(labels=labels, fraction=0.3, seed=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert [(labels[a] == k).sum() for k in range(4)] == [15] * 4


def test_el2n_and_uncertainty_match_references():
  rng = np.random.default_rng(1)
  labels, inputs = _inputs(rng, n=60)
  logits = inputs["logits"]
  logits[7] = 0.0   # uniform prediction: the most uncertain by every measure
  p = _np_softmax(logits)
  y = np.eye(logits.shape[1])[labels]
  el2n_ref = np.linalg.norm(p - y, axis=1)
  np.testing.assert_allclose(baselines.el2n_scores(logits, labels), el2n_ref)
  got = baselines.el2n(logits, labels=labels, fraction=0.25)
  np.testing.assert_array_equal(
      got, selector.select_top_fraction(el2n_ref, labels, 0.25))
  np.testing.assert_array_equal(
      got, baselines.el2n(labels=labels, fraction=0.25, evs=el2n_ref))

  ps = np.sort(p, axis=1)
  refs = {
      "least_confidence": 1 - ps[:, -1],
      "margin": ps[:, -2] - ps[:, -1],
      "entropy": -(p * np.log(p)).sum(1),
  }
  for name, ref in refs.items():
    got = getattr(baselines, name)(logits, labels=labels, fraction=0.1,
                                   balance=False)
    np.testing.assert_array_equal(
        got, selector.select_top_fraction(ref, labels, 0.1, balance=False))
    assert 7 in got


def test_forgetting_tracker_hand_made_sequence():
  t = ForgettingTracker(5)
  # Sample: 0 = learned, forgotten twice; 1 = never learned; 2 = always
  # right; 3 = forgotten once; 4 = never seen.
  t.update([0, 1, 2, 3], [True, False, True, False])
  t.update([3, 2, 1, 0], [True, True, False, False])
  state = t.state_dict()
  t = ForgettingTracker.from_state_dict(state)     # checkpoint round trip
  t.update([0, 1, 2, 3], [True, False, True, False])
  t.update([0, 1, 2], [False, False, True])
  np.testing.assert_array_equal(t.forgetting_events, [2, 0, 0, 1, 0])
  np.testing.assert_array_equal(t.num_updates, [4, 4, 4, 3, 0])
  np.testing.assert_array_equal(t.counts(), [2, np.inf, 0, 1, np.inf])
  np.testing.assert_array_equal(t.counts(never_learned=-1), [2, -1, 0, 1, -1])
  # The state dict is a copy, not a view.
  assert state["forgetting_events"].sum() == 1
  with pytest.raises(ValueError, match="unique"):
    t.update([1, 1], [True, False])
  with pytest.raises(ValueError, match="range|\\["):
    t.update([5], [True])

  counts = t.counts()
  labels = np.zeros(5, int)
  # Never-learned first (ties -> lower index), then most forgotten.
  np.testing.assert_array_equal(
      baselines.forgetting(counts, labels=labels, fraction=0.4), [1, 4])
  np.testing.assert_array_equal(
      baselines.forgetting(counts, labels=labels, fraction=0.6), [0, 1, 4])


def _radius(points, centres):
  d = np.linalg.norm(points[:, None] - points[centres][None], axis=-1)
  return d.min(axis=1).max()


def test_kcenter_greedy_is_a_2_approximation():
  rng = np.random.default_rng(0)
  for trial in range(30):
    pts = rng.normal(size=(9, 2)) * rng.uniform(0.1, 10)
    labels = np.zeros(9, int)
    opt = min(_radius(pts, list(c))
              for c in itertools.combinations(range(9), 3))
    for seed in range(3):
      idx = baselines.kcenter_greedy(pts, labels=labels, fraction=1 / 3,
                                     balance=False, seed=seed,
                                     chunk_size=4)   # exercises chunking
      assert len(idx) == 3
      assert _radius(pts, idx) <= 2 * opt + 1e-9, (trial, seed)


def test_kcenter_greedy_per_class_and_duplicates():
  # Class 0: two far clusters; class 1: all points identical (distances 0).
  pts = np.concatenate([np.zeros((5, 3)), np.full((5, 3), 100.0),
                        np.ones((4, 3))])
  labels = np.array([0] * 10 + [1] * 4)
  idx = baselines.kcenter_greedy(pts, labels=labels, fraction=0.2, seed=0)
  # 2 from class 0, one per cluster; 1 from class 1.
  assert len(idx) == 3 and ((idx < 5).sum(), (idx >= 10).sum()) == (1, 1)
  idx = baselines.kcenter_greedy(pts, labels=labels, fraction=1.0, seed=0)
  np.testing.assert_array_equal(idx, np.arange(14))


def test_moderate_picks_samples_near_median_distance():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(40, 3))
  labels = np.repeat([0, 1], 20)
  got = baselines.moderate(emb, labels=labels, fraction=0.25)
  for c in (0, 1):
    members = np.flatnonzero(labels == c)
    d = np.linalg.norm(emb[members] - emb[members].mean(0), axis=1)
    want = members[np.argsort(np.abs(d - np.median(d)), kind="stable")[:5]]
    np.testing.assert_array_equal(got[labels[got] == c], np.sort(want))


def test_contextual_diversity_covers_prediction_clusters():
  rng = np.random.default_rng(3)
  # Three tight clusters of predictions (confident in class 0, 1, 2).
  centres = np.eye(3) * 8.0
  logits = np.concatenate([c + rng.normal(size=(10, 3)) * 0.05
                           for c in centres])
  labels = np.zeros(30, int)
  for seed in range(4):
    idx = baselines.contextual_diversity(logits, labels=labels, fraction=0.1,
                                         balance=False, seed=seed,
                                         chunk_size=7)
    assert sorted(idx // 10) == [0, 1, 2], idx


def _glister_reference(logits, emb, labels, members_of, fraction, eta,
                       val_mask, budgets):
  """Explicit-gradient greedy: g_i = vec((p_i - y_i) h_i^T); W moves by
  -eta * g_j after each pick; val logits recomputed from W."""
  k_cls = logits.shape[1]
  h = np.concatenate([emb, np.ones((len(emb), 1))], axis=1)
  g = np.stack([np.outer(_np_softmax(logits[i]) - np.eye(k_cls)[labels[i]],
                         h[i]).ravel() for i in range(len(emb))])
  out = []
  for members, k in zip(members_of, budgets):
    val = [i for i in members if val_mask[i]]
    pool = [i for i in members if not val_mask[i]]
    w_delta = np.zeros((k_cls, h.shape[1]))
    for _ in range(k):
      z = logits[val] + h[val] @ w_delta.T
      b = _np_softmax(z) - np.eye(k_cls)[labels[val]]
      g_val = (b.T @ h[val]).ravel() / len(val)
      gains = [g[i] @ g_val for i in pool]
      j = pool[int(np.argmax(gains))]
      pool.remove(j)
      out.append(j)
      w_delta -= eta * g[j].reshape(w_delta.shape)
  return np.sort(out)


@pytest.mark.parametrize("balance", [True, False])
def test_glister_matches_explicit_gradient_greedy(balance):
  rng = np.random.default_rng(4)
  n, k_cls = 40, 3
  labels = rng.integers(0, k_cls, n)
  logits = rng.normal(size=(n, k_cls)) * 2
  emb = rng.normal(size=(n, 4))
  val_mask = baselines.glister_val_split(labels, 0.25, seed=5)
  sizes = np.bincount(labels, minlength=k_cls)
  assert val_mask.sum() == sum(round(0.25 * s) for s in sizes)
  if balance:
    members_of = [list(np.flatnonzero(labels == c)) for c in range(k_cls)]
    budgets = selector.class_budgets(sizes, 0.3)
  else:
    members_of, budgets = [list(range(n))], [round(0.3 * n)]
  want = _glister_reference(logits, emb, labels, members_of, 0.3, 0.5,
                            val_mask, budgets)
  got = baselines.glister(logits, emb, labels=labels, fraction=0.3,
                          balance=balance, seed=5, val_fraction=0.25, eta=0.5,
                          stochastic_eps=None)
  np.testing.assert_array_equal(got, want)
  assert not val_mask[got].any()   # held-out samples are not selected
  # The Taylor update matters: with eta = 0 the greedy is a plain top-k of
  # the initial gains, which differs here.
  no_step = baselines.glister(logits, emb, labels=labels, fraction=0.3,
                              balance=balance, seed=5, val_fraction=0.25,
                              eta=0.0, stochastic_eps=None)
  assert len(no_step) == len(got) and not np.array_equal(no_step, got)


def test_glister_stochastic_and_full_fraction():
  rng = np.random.default_rng(6)
  n = 200
  labels = rng.integers(0, 4, n)
  logits, emb = rng.normal(size=(n, 4)), rng.normal(size=(n, 8))
  a = baselines.glister(logits, emb, labels=labels, fraction=0.1, seed=1)
  b = baselines.glister(logits, emb, labels=labels, fraction=0.1, seed=1)
  np.testing.assert_array_equal(a, b)
  # fraction 1: the held-out samples are used once the others run out.
  np.testing.assert_array_equal(
      baselines.glister(logits, emb, labels=labels, fraction=1.0, seed=1),
      np.arange(n))
  with pytest.raises(ValueError, match="val_fraction"):
    baselines.glister(logits, emb, labels=labels, fraction=0.1,
                      val_fraction=1.0)
