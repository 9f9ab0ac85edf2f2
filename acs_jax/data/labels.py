"""Training labels: reading them from a random-access source, and label noise.

Symmetric label noise is a per-sample shift (label + shift) % K drawn from the
seed alone, so it applies the same way to labels held in memory and to records
read later from a random-access source (datasets.Dataset.train_labels, the
input pipeline).
"""
from __future__ import annotations

from typing import Any

import numpy as np

# Records per __getitems__ call when reading every training label of a
# random-access source (Dataset.train_labels).
_LABEL_READ_BATCH = 4096


def read_source_labels(source: Any, num_records: int, num_classes: int,
                       name: str = "dataset") -> np.ndarray:
  """int32 [num_records]: the "label" field of every record of a source.

  Reads `_LABEL_READ_BATCH` records per `source.__getitems__(list)` call when
  the source has that method (array_record serves a batch with its own
  readers), else one `source[i]` at a time. Each record is read once.

  Raises:
    ValueError: the source's length is not num_records, or a label is
      outside [0, num_classes).
  """
  if len(source) != num_records:
    raise ValueError(f"the training source of {name!r} has {len(source)} "
                     f"records, the dataset says {num_records}")
  get_many = getattr(source, "__getitems__", None)
  labels = np.empty(num_records, np.int32)
  for start in range(0, num_records, _LABEL_READ_BATCH):
    idx = list(range(start, min(start + _LABEL_READ_BATCH, num_records)))
    records = (get_many(idx) if get_many is not None
               else [source[i] for i in idx])
    labels[start:start + len(idx)] = [int(r["label"]) for r in records]
  if num_records and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"the training labels of {name!r} must be in [0, "
                     f"{num_classes}), got [{labels.min()}, {labels.max()}]")
  return labels


def label_noise_offsets(num_samples: int, rate: float, num_classes: int,
                        seed: int) -> np.ndarray:
  """The per-sample label shifts of symmetric label noise.

  Exactly round(rate * num_samples) samples, chosen uniformly, get a shift
  drawn uniformly from 1..K-1, so that (label + shift) % K is uniform over the
  K-1 OTHER classes whatever the true label is. Depends only on the arguments,
  not on the labels, so it can be applied lazily to records read later.

  Args:
    num_samples: N.
    rate: fraction of labels to flip, in [0, 1).
    num_classes: K >= 2.
    seed: non-negative integer.

  Returns:
    int32 [N], 0 for samples that keep their label.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"label noise rate must be in [0, 1), got {rate}")
  if num_classes < 2 and rate > 0:
    raise ValueError("label noise needs at least 2 classes")
  rng = np.random.default_rng([seed, 0x1AB3])
  offsets = np.zeros(num_samples, np.int32)
  num_flip = int(round(rate * num_samples))
  flipped = rng.permutation(num_samples)[:num_flip]
  offsets[flipped] = rng.integers(1, num_classes, size=num_flip)
  return offsets


def shift_labels(labels: Any, offsets: Any, num_classes: int) -> np.ndarray:
  """int32 (labels + offsets) % K: how label noise is applied, everywhere."""
  return ((np.asarray(labels, np.int64) + np.asarray(offsets, np.int64))
          % num_classes).astype(np.int32)


def apply_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                      seed: int) -> np.ndarray:
  """Symmetric label noise: flips round(rate*N) labels to a different class.

  Args:
    labels: int [N] true labels in [0, K).
    rate: fraction of labels to flip, in [0, 1).
    num_classes: K.
    seed: non-negative integer; the same seed flips the same samples the same
      way.

  Returns:
    int32 [N] noisy labels; a flipped label is always a different class,
    uniformly among the other K-1.
  """
  labels = np.asarray(labels).astype(np.int32)
  offsets = label_noise_offsets(len(labels), rate, num_classes, seed)
  return shift_labels(labels, offsets, num_classes)
