"""Named random streams: every random choice of a run comes from its seed.

A run's randomness is `config.seed` folded with the name of what it is for,
so streams never collide (within a run, or across the seeds of a sweep) and
adding a stream changes no other. Device-side streams are jax keys
(`key`); host-side ones (tf.data shuffles and augmentation, the calibration
batch, randomised selectors) are non-negative integer seeds (`host_seed`).
`config.data.seed` stays separate: it fixes the data (label noise, synthetic
sets), which every run of a sweep must share.
"""
from __future__ import annotations

import zlib

import jax
import numpy as np

STREAMS = {
    "teacher_init": "the teacher's initial weights (trained from scratch)",
    "teacher_data": "the teacher stage's shuffles and augmentation",
    "teacher_step": "the teacher's train steps (e.g. dropout)",
    "calibration": "the training images that calibrate the LSQ step sizes",
    "student_data": "the QAT stage's shuffles and augmentation",
    "student_step": "the student's train steps (e.g. dropout)",
    "selection": "randomised selectors (random, k-center, ...), per epoch",
}


def _stream_id(stream: str) -> int:
  if stream not in STREAMS:
    raise ValueError(f"unknown random stream {stream!r}; valid: "
                     f"{', '.join(STREAMS)}")
  return zlib.crc32(stream.encode())


def key(seed: int, stream: str) -> jax.Array:
  """The jax key of `stream` for the run seeded with `seed`."""
  return jax.random.fold_in(jax.random.key(seed), _stream_id(stream))


def host_seed(seed: int, stream: str, *extra: int) -> int:
  """A non-negative 63-bit integer seed of `stream` (and `extra`, e.g. the
  epoch) for the run seeded with `seed`."""
  words = np.random.SeedSequence(
      [int(seed), _stream_id(stream), *map(int, extra)]).generate_state(
          2, np.uint32)
  return ((int(words[0]) << 32) | int(words[1])) & (2**63 - 1)
