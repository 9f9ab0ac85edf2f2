"""Tests for acs_jax.rngs: named streams are deterministic and distinct."""
import itertools

import jax
import numpy as np
import pytest

from acs_jax import rngs


def test_host_seeds_are_deterministic_distinct_and_in_range():
  seen = {}
  for seed, stream, epoch in itertools.product(range(4), rngs.STREAMS,
                                               range(4)):
    s = rngs.host_seed(seed, stream, epoch)
    assert 0 <= s < 2**63 and s == rngs.host_seed(seed, stream, epoch)
    assert s not in seen, (seed, stream, epoch, seen.get(s))
    seen[s] = (seed, stream, epoch)
  # The collision that seed + epoch offsets had across a sweep's seeds.
  assert rngs.host_seed(0, "selection", 1) != rngs.host_seed(1, "selection", 0)


def test_keys_are_deterministic_and_distinct():
  draws = {stream: np.asarray(jax.random.uniform(rngs.key(0, stream), (4,)))
           for stream in rngs.STREAMS}
  again = np.asarray(jax.random.uniform(rngs.key(0, "student_step"), (4,)))
  np.testing.assert_array_equal(draws["student_step"], again)
  values = np.stack(list(draws.values()))
  assert len({tuple(v) for v in values}) == len(rngs.STREAMS)
  other_seed = np.asarray(jax.random.uniform(rngs.key(1, "student_step"),
                                             (4,)))
  assert not np.array_equal(other_seed, draws["student_step"])


def test_unknown_stream_names_the_valid_ones():
  with pytest.raises(ValueError, match="unknown random stream 'dropout'; "
                     "valid: teacher_init"):
    rngs.host_seed(0, "dropout")
