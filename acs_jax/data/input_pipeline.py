"""tf.data input pipelines over sample indices (host-side, no accelerator).

Training reads the coreset: the selector's index array is shuffled (seeded by
(seed, epoch)), cut into global batches (remainder dropped), and each process
keeps its own rows of every global batch, so all hosts run the same number of
steps and together see exactly the global batch. Samples are gathered from the
in-memory arrays (or read from the random-access source: only the selected
records are touched), augmented with per-sample keys derived from
(seed, epoch, sample index), and normalised with the dataset's mean/std.

Evaluation reads a whole split once, in order, with fixed-shape batches whose
tail is padded with mask=False rows.

Batches are numpy dicts:
  train: {'image': float32 [local, H, W, C], 'label': int32 [local],
          'index': int64 [local]}
  eval:  the same plus 'mask': bool [local].

TF must not claim an accelerator: it is imported on first use through
`acs_jax.env.lazy_tensorflow`, which hides every accelerator from it, and
everything here is also pinned to the host CPU.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from acs_jax import env
from acs_jax.data import augment as aug
from acs_jax.data.datasets import Dataset
from acs_jax.data.labels import shift_labels

tf = env.lazy_tensorflow()
_CPU = "/device:CPU:0"


class NumpyIterator:
  """An iterator of numpy batch dicts that also knows its length (steps)."""

  def __init__(self, ds: tf.data.Dataset, num_steps: int):
    self.dataset = ds
    self._num_steps = num_steps
    self._it = ds.as_numpy_iterator()

  def __len__(self) -> int:
    return self._num_steps

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)


def steps_per_epoch(num_indices: int, global_batch: int) -> int:
  """Training steps over a coreset of `num_indices` (remainder dropped)."""
  if global_batch <= 0:
    raise ValueError(f"global_batch must be positive, got {global_batch}")
  return int(num_indices) // int(global_batch)


def eval_steps(num_examples: int, batch_size: int) -> int:
  """Evaluation batches over a split (last one padded)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return -(-int(num_examples) // int(batch_size))


def _local_rows(batch: int, process_index: int, process_count: int,
                batch_field: str) -> slice:
  """This process's rows of every global batch."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count), got "
                     f"process_index={process_index}, "
                     f"process_count={process_count}")
  if batch <= 0 or batch % process_count:
    raise ValueError(f"{batch_field}={batch} must be a positive multiple of "
                     f"process_count={process_count}")
  local = batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  # Keep batch order fixed whatever the parallelism (it is the default, made
  # explicit because reproducibility depends on it).
  options.deterministic = True
  # No autotuning thread. Dropping a finished iterator joins that thread,
  # which can be asleep in its optimisation period: in the W2 ResNet-20
  # runs on 2 vCPUs that stalled the loop, idle, for 10-40 s at about one
  # epoch start in three and half the score passes (found with py-spy and
  # gdb, 2026-12-04: docs/benchmark.md). AUTOTUNE map parallelism then takes
  # tf.data's fixed default; the prefetch depths are set here.
  options.autotune.enabled = False
  return options


def _memory_tensors(dataset: Dataset, split: str) -> tuple[tf.Tensor,
                                                          tf.Tensor]:
  """The split's arrays as host tf tensors, converted once per Dataset.

  Captured eager tensors are passed to the tf.data functions by reference, so
  the images are not copied into every pipeline's graph.
  """
  key = ("tf_arrays", split)
  if key not in dataset.cache:
    x, y = dataset.arrays(split)
    with tf.device(_CPU):
      dataset.cache[key] = (tf.convert_to_tensor(x),
                            tf.convert_to_tensor(y, tf.int32))
  return dataset.cache[key]


def _record_reader(dataset: Dataset, split: str):
  """A numpy function: int64 [L] indices -> (encoded [L], int64 labels [L])."""
  source = dataset.source(split)
  offsets = dataset.label_offsets if split == "train" else None
  num_classes = dataset.num_classes
  get_many = getattr(source, "__getitems__", None)

  def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx_list = [int(i) for i in idx]
    records = (get_many(idx_list) if get_many is not None
               else [source[i] for i in idx_list])
    images = np.empty(len(records), dtype=object)
    for i, r in enumerate(records):
      if not isinstance(r["image"], (bytes, np.bytes_)):
        raise TypeError(f"random-access records of {dataset.name!r} must "
                        "hold encoded image bytes, got "
                        f"{type(r['image']).__name__}")
      images[i] = bytes(r["image"])
    labels = np.asarray([int(r["label"]) for r in records], np.int64)
    if offsets is not None:  # as Dataset.train_labels() applies it
      labels = shift_labels(labels, offsets[idx], num_classes).astype(
          np.int64)
    return images, labels

  return read


def _read_records(dataset: Dataset, split: str, idx: tf.Tensor
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  images, labels = tf.numpy_function(_record_reader(dataset, split), [idx],
                                     [tf.string, tf.int64], stateful=False)
  images.set_shape(idx.shape)
  labels.set_shape(idx.shape)
  return images, tf.cast(labels, tf.int32)


def _random_access_pipeline(ds: tf.data.Dataset, dataset: Dataset,
                            split: str, local: int,
                            transform) -> tf.data.Dataset:
  """Index batches -> read the records -> per-image transform -> batches.

  Args:
    ds: elements {'index': int64 [local] (valid indices), 'key': int64
      [local, 2], ...extra per-row fields}.
    dataset: a random-access Dataset.
    split: "train" or "test".
    local: rows per batch.
    transform: (encoded tf.string [], key int64 [2]) -> float32 [H, W, C].

  Returns:
    Batches {'image': float32 [local,H,W,C] in [0,255], 'label', ...}.
  """
  def read(el):
    images, labels = _read_records(dataset, split, el["index"])
    return {**el, "encoded": images, "label": labels}

  def one(el):
    out = {k: v for k, v in el.items() if k not in ("encoded", "key")}
    out["image"] = transform(el["encoded"], el["key"])
    return out

  # Whole index batches are read at once (array_record serves a list of
  # records with its own readers); decoding then runs image by image in
  # parallel. unbatch/batch(local) restores exactly the same rows.
  ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.unbatch().map(one, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(local, drop_remainder=True)


def make_train_dataset(dataset: Dataset, indices: Any, *, global_batch: int,
                       seed: int, epoch: int, process_index: int = 0,
                       process_count: int = 1, augment: bool = True,
                       prefetch: int = 2) -> tuple[tf.data.Dataset, int]:
  """The training tf.data pipeline of one epoch over a coreset.

  See `make_train_iterator`.

  Returns:
    (dataset of batch dicts, steps).
  """
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer)
                               or indices.size == 0):
    raise ValueError(f"indices must be a 1-D integer array, got "
                     f"{indices.dtype} {indices.shape}")
  indices = indices.astype(np.int64)
  n = len(indices)
  if global_batch > n:
    raise ValueError(
        f"global_batch={global_batch} is larger than the coreset "
        f"(len(indices)={n}): batch larger than the coreset; lower the batch "
        "size or select more samples")
  rows = _local_rows(global_batch, process_index, process_count,
                     "global_batch")
  if indices.min() < 0 or indices.max() >= dataset.num_train:
    raise ValueError(f"indices must be in [0, {dataset.num_train}) (training "
                     f"samples of {dataset.name!r}), got "
                     f"[{indices.min()}, {indices.max()}]")
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
  steps = steps_per_epoch(n, global_batch)
  # A full permutation == tf shuffle with buffer len(indices), but computed
  # by numpy: identical on every host (same seed) and across TF versions.
  order = np.random.default_rng([seed, epoch, 0x5F1E]).permutation(n)
  batches = indices[order[:steps * global_batch]].reshape(steps, global_batch)
  local_idx = np.ascontiguousarray(batches[:, rows])
  local = local_idx.shape[1]
  keys = aug.sample_keys(local_idx.reshape(-1), seed, epoch).reshape(
      steps, local, 2)

  mode = dataset.augment if augment else "none"
  with tf.device(_CPU):
    ds = tf.data.Dataset.from_tensor_slices({"index": local_idx, "key": keys})
    if dataset.in_memory:
      x_all, y_all = _memory_tensors(dataset, "train")

      def gather(el):
        x = tf.gather(x_all, el["index"])
        if mode in ("cifar", "crop"):
          x = aug.crop_flip(x, el["key"], padding=dataset.crop_padding,
                            pad_mode=dataset.pad_mode, flip=mode == "cifar")
        return {"image": aug.normalize(x, dataset.mean, dataset.std),
                "label": tf.gather(y_all, el["index"]),
                "index": el["index"]}

      ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    else:
      size = dataset.image_shape[:2]
      channels = dataset.image_shape[2]
      if mode == "imagenet":
        transform = lambda e, k: aug.decode_random_resized_crop(  # noqa: E731
            e, k, size=size, channels=channels)
      else:
        transform = lambda e, k: aug.decode_center_crop(  # noqa: E731
            e, size=size, channels=channels)
      ds = _random_access_pipeline(ds, dataset, "train", local, transform)
      ds = ds.map(lambda el: {
          "image": aug.normalize(el["image"], dataset.mean, dataset.std),
          "label": el["label"], "index": el["index"]},
                  num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(prefetch).with_options(_options())
  return ds, steps


def make_train_iterator(dataset: Dataset, indices: Any, *, global_batch: int,
                        seed: int, epoch: int, process_index: int = 0,
                        process_count: int = 1, augment: bool = True,
                        prefetch: int = 2) -> NumpyIterator:
  """Batches of one training epoch over the selected samples.

  The index array is shuffled with a permutation seeded by (seed, epoch), cut
  into steps_per_epoch(len(indices), global_batch) global batches (the
  remainder, len(indices) % global_batch samples, is dropped), and this
  process keeps rows [process_index*local, (process_index+1)*local) of each,
  local = global_batch // process_count. Augmentation draws come from
  (seed, epoch, sample index) only.

  Args:
    dataset: the Dataset.
    indices: int [n] training-sample indices (the coreset); repeats allowed.
    global_batch: rows per step over all processes; <= n, a multiple of
      process_count.
    seed: non-negative run seed.
    epoch: non-negative epoch number (new order and new augmentation each
      epoch).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    augment: apply the dataset's training augmentation (False: the plain
      images; for random-access datasets the evaluation resize + centre crop).
    prefetch: batches prepared ahead.

  Returns:
    An iterator (with len() = steps) of {'image': float32 [local, H, W, C]
    normalised, 'label': int32 [local], 'index': int64 [local]}.

  Raises:
    ValueError: global_batch > len(indices) ("batch larger than the coreset"),
      indices out of range, or a bad process layout.
  """
  ds, steps = make_train_dataset(
      dataset, indices, global_batch=global_batch, seed=seed, epoch=epoch,
      process_index=process_index, process_count=process_count,
      augment=augment, prefetch=prefetch)
  return NumpyIterator(ds, steps)


def make_eval_dataset(dataset: Dataset, split: str, *, batch_size: int,
                      process_index: int = 0, process_count: int = 1,
                      prefetch: int = 2) -> tuple[tf.data.Dataset, int]:
  """The evaluation tf.data pipeline; see `make_eval_iterator`.

  Returns:
    (dataset of batch dicts, number of batches).
  """
  n = dataset.num_examples(split)
  rows = _local_rows(batch_size, process_index, process_count, "batch_size")
  steps = eval_steps(n, batch_size)
  padded = np.full(steps * batch_size, -1, np.int64)
  padded[:n] = np.arange(n)
  local_idx = np.ascontiguousarray(padded.reshape(steps, batch_size)[:, rows])
  local = local_idx.shape[1]
  with tf.device(_CPU):
    ds = tf.data.Dataset.from_tensor_slices(local_idx)
    if dataset.in_memory:
      x_all, y_all = _memory_tensors(dataset, split)

      def gather(idx):
        mask = idx >= 0
        safe = tf.maximum(idx, 0)
        image = aug.normalize(tf.gather(x_all, safe), dataset.mean,
                              dataset.std)
        return {
            "image": tf.where(mask[:, None, None, None], image, 0.0),
            "label": tf.where(mask, tf.gather(y_all, safe), 0),
            "index": idx,
            "mask": mask,
        }

      ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    else:
      size = dataset.image_shape[:2]
      channels = dataset.image_shape[2]
      # Padding rows read sample 0 (any valid record) and are masked below.
      ds = ds.map(lambda idx: {"index": tf.maximum(idx, 0), "orig": idx,
                               "key": tf.zeros([local, 2], tf.int64)})
      ds = _random_access_pipeline(
          ds, dataset, split, local,
          lambda e, k: aug.decode_center_crop(e, size=size, channels=channels))

      def finish(el):
        mask = el["orig"] >= 0
        image = aug.normalize(el["image"], dataset.mean, dataset.std)
        return {
            "image": tf.where(mask[:, None, None, None], image, 0.0),
            "label": tf.where(mask, el["label"], 0),
            "index": el["orig"],
            "mask": mask,
        }

      ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(prefetch).with_options(_options())
  return ds, steps


def make_eval_iterator(dataset: Dataset, split: str, *, batch_size: int,
                       process_index: int = 0, process_count: int = 1,
                       prefetch: int = 2) -> NumpyIterator:
  """Batches covering a whole split once, unaugmented, in index order.

  Global batch b holds samples [b*batch_size, (b+1)*batch_size); the last one
  is padded up to batch_size with rows whose mask is False (image 0, label 0,
  index -1). Each process keeps its `batch_size // process_count` rows of
  every global batch, so every process runs eval_steps(n, batch_size) batches
  and every sample appears exactly once over all processes. Random-access
  (ImageNet) images are resized (shorter side to size/0.875) and centre
  cropped.

  Args:
    dataset: the Dataset.
    split: "train" (e.g. to score every training sample) or "test".
    batch_size: global rows per batch, a multiple of process_count.
    process_index: this process.
    process_count: number of processes.
    prefetch: batches prepared ahead.

  Returns:
    An iterator (with len()) of {'image': float32 [local,H,W,C], 'label':
    int32 [local], 'index': int64 [local], 'mask': bool [local]}.
  """
  ds, steps = make_eval_dataset(
      dataset, split, batch_size=batch_size, process_index=process_index,
      process_count=process_count, prefetch=prefetch)
  return NumpyIterator(ds, steps)
