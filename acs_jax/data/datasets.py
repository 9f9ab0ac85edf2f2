"""Datasets for coreset training: what a dataset is, and loading one.

A `Dataset` describes one image-classification dataset and gives access to its
samples by integer index, which is what the coreset selectors work with (the
index of a training sample is its row in `x_train`, or its position in the
random-access `train_source`).

Two storage kinds:
  * in memory (every source except TFDS imagenet2012): uint8 arrays
    `x_train` [N, H, W, C], `y_train` int32 [N], `x_test`, `y_test`;
  * random access (TFDS imagenet2012): `train_source` / `test_source`, sequences
    of records {"image": encoded JPEG bytes, "label": int}; a coreset epoch
    reads (and decodes) only the selected samples.

Sources (`config.data.source`):
  tfds          a prepared TFDS dataset; never downloads (no internet here).
  npz           one .npz with x_train, y_train, x_test, y_test [, class_names].
  image_folder  root/{train,test}/<class>/<image files>.
  digits        scikit-learn's bundled 8x8 digits; needs no file at all.
  synthetic     a seeded, easy task for tests and smoke runs.
"""
from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import time
from typing import Any, Sequence

import numpy as np

from acs_jax.data.labels import label_noise_offsets
from acs_jax.data.labels import read_source_labels
from acs_jax.data.labels import shift_labels

SOURCES = ("tfds", "npz", "image_folder", "digits", "synthetic")
TFDS_NAMES = ("cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist",
              "imagenet2012")
AUGMENTS = ("cifar", "crop", "imagenet", "none")
PAD_MODES = ("reflect", "constant")

# Per-channel statistics of the ImageNet training set (the standard values);
# too expensive to recompute from 1.28M JPEGs at load time.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Named input normalisations, (mean, std) in [0, 1] pixel units:
# config.data.normalization and the teachers imported from PyTorch. The CIFAR
# values are the usual per-dataset statistics of the original pixels.
NORMALIZATIONS = {
    "imagenet": (_IMAGENET_MEAN, _IMAGENET_STD),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One image-classification dataset.

  Attributes:
    name: dataset name (the TFDS name, the npz/folder stem, "digits", ...).
    num_classes: number of classes K; labels are in [0, K).
    image_shape: (H, W, C) of the images as the model sees them.
    mean: C per-channel means, in [0, 1] pixel units.
    std: C per-channel standard deviations, in [0, 1] pixel units.
    num_train: number of training samples N.
    num_test: number of test samples.
    class_names: K names.
    augment: training augmentation, one of AUGMENTS: "cifar" (random crop from
      a padded image + horizontal flip), "crop" (random crop, no flip),
      "imagenet" (random resized crop + flip; evaluation: resize + centre
      crop), "none".
    crop_padding: pixels of padding per side for "cifar"/"crop".
    pad_mode: "reflect" or "constant" (zero) padding for the crops.
    x_train: uint8 [N, H, W, C] or None (random-access datasets).
    y_train: int32 [N] training labels, WITH label noise if any; None for
      random-access datasets (labels come with the records). Read the
      training labels of either kind with `train_labels()`.
    x_test: uint8 [M, H, W, C] or None.
    y_test: int32 [M] or None.
    y_train_clean: int32 [N], the true training labels (== y_train without
      label noise); None for random-access datasets.
    train_source: random-access training records or None. A sequence
      (`len`, `[i]`, optionally `__getitems__(list)`) of dicts
      {"image": encoded image bytes, "label": int}.
    test_source: same for the test split.
    label_noise: the symmetric label-noise rate applied to training labels.
    label_offsets: int32 [N] or None; noisy = (true + offset) % K. Kept so
      random-access datasets can apply the noise as records are read.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_train: int
  num_test: int
  class_names: tuple[str, ...] = dataclasses.field(repr=False)
  augment: str = "none"
  crop_padding: int = 0
  pad_mode: str = "reflect"
  x_train: np.ndarray | None = dataclasses.field(default=None, repr=False)
  y_train: np.ndarray | None = dataclasses.field(default=None, repr=False)
  x_test: np.ndarray | None = dataclasses.field(default=None, repr=False)
  y_test: np.ndarray | None = dataclasses.field(default=None, repr=False)
  y_train_clean: np.ndarray | None = dataclasses.field(default=None,
                                                       repr=False)
  train_source: Any = dataclasses.field(default=None, repr=False)
  test_source: Any = dataclasses.field(default=None, repr=False)
  label_noise: float = 0.0
  label_offsets: np.ndarray | None = dataclasses.field(default=None,
                                                       repr=False)
  # Per-object cache for the input pipeline (e.g. the arrays as tf tensors,
  # converted once). init=False: dataclasses.replace() starts a fresh one, so
  # a copy with new arrays never reuses the old tensors.
  cache: dict = dataclasses.field(default_factory=dict, init=False,
                                  repr=False, compare=False)

  def __post_init__(self):
    if self.augment not in AUGMENTS:
      raise ValueError(f"Dataset.augment must be one of {AUGMENTS}, got "
                       f"{self.augment!r}")
    if self.pad_mode not in PAD_MODES:
      raise ValueError(f"Dataset.pad_mode must be one of {PAD_MODES}, got "
                       f"{self.pad_mode!r}")
    c = self.image_shape[2]
    if len(self.mean) != c or len(self.std) != c:
      raise ValueError(f"mean/std need {c} channels, got {len(self.mean)} and "
                       f"{len(self.std)}")
    if self.in_memory:
      for split, n in (("train", self.num_train), ("test", self.num_test)):
        x, y = self.arrays(split)
        if x is None or y is None:
          raise ValueError(f"in-memory dataset {self.name!r} lacks x_{split} "
                           f"or y_{split}")
        if x.dtype != np.uint8 or x.shape != (n, *self.image_shape):
          raise ValueError(
              f"x_{split} must be uint8 {(n, *self.image_shape)}, got "
              f"{x.dtype} {x.shape}")
        if y.shape != (n,):
          raise ValueError(f"y_{split} must have shape ({n},), got {y.shape}")
    elif self.train_source is None or self.test_source is None:
      raise ValueError(f"dataset {self.name!r} has neither arrays nor "
                       "random-access sources for both splits")
    if self.augment == "imagenet" and self.in_memory:
      raise ValueError('augment "imagenet" needs a random-access source of '
                       'encoded images; in-memory datasets support "cifar", '
                       '"crop" and "none"')

  @property
  def in_memory(self) -> bool:
    """True when the samples are uint8 arrays (else random-access sources)."""
    return self.x_train is not None

  def num_examples(self, split: str) -> int:
    """Samples in "train" or "test"."""
    _check_split(split)
    return self.num_train if split == "train" else self.num_test

  def arrays(self, split: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(images uint8 [n,H,W,C], labels int32 [n]) of an in-memory split."""
    _check_split(split)
    if split == "train":
      return self.x_train, self.y_train
    return self.x_test, self.y_test

  def source(self, split: str) -> Any:
    """The random-access record source of a split (None when in memory)."""
    _check_split(split)
    return self.train_source if split == "train" else self.test_source

  @property
  def noisy_mask(self) -> np.ndarray:
    """bool [N]: training samples whose label was flipped by label noise."""
    if self.label_offsets is None:
      return np.zeros(self.num_train, dtype=bool)
    return self.label_offsets != 0

  def train_labels(self) -> np.ndarray:
    """int32 [N]: every training label, WITH label noise if the dataset has it.

    The one way to get the training labels of either kind of dataset. In
    memory: y_train (already noisy). Random access: the "label" field of every
    training record, read once per Dataset object (in batches through
    `__getitems__` when the source has it; the images stay encoded bytes, so
    nothing is decoded) and cached in `self.cache`; label noise is applied as
    the input pipeline applies it to the records it reads,
    `shift_labels(true, label_offsets, K)`. The result is read-only.
    """
    if self.in_memory:
      return np.asarray(self.y_train, dtype=np.int32)
    key = "train_labels"
    if key not in self.cache:
      t0 = time.time()
      true = read_source_labels(self.train_source, self.num_train,
                                self.num_classes, self.name)
      labels = (true if self.label_offsets is None else
                shift_labels(true, self.label_offsets, self.num_classes))
      labels.setflags(write=False)
      self.cache[key] = labels
      logging.info("Read the labels of the %d training records of %s in "
                   "%.1fs", self.num_train, self.name, time.time() - t0)
    return self.cache[key]


def _check_split(split: str) -> None:
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


# ---------------------------------------------------------------------------
# Statistics.


def channel_stats(images: np.ndarray, chunk: int = 8192
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of uint8 images, in [0, 1] pixel units.

  Counts the 256 pixel values per channel (chunk by chunk, so no float copy of
  the data is made; a float64 copy of CIFAR-10 would be 1.2 GB) and takes the
  moments of the histograms in float64: exact, and ~0.6 s for CIFAR-10.

  Args:
    images: uint8 [N, H, W, C].
    chunk: images per chunk.

  Returns:
    (mean, std), each a tuple of C floats.
  """
  c = images.shape[-1]
  counts = np.zeros((c, 256), np.int64)
  for start in range(0, images.shape[0], chunk):
    block = images[start:start + chunk].reshape(-1, c)
    for ch in range(c):
      counts[ch] += np.bincount(block[:, ch], minlength=256)
  values = np.arange(256, dtype=np.float64)
  hist = counts.astype(np.float64)
  total = hist.sum(axis=1)
  mean = hist @ values / total
  var = np.maximum(hist @ (values * values) / total - mean**2, 0.0)
  std = np.sqrt(var)
  # A constant channel would divide by zero when normalising.
  std = np.where(std > 0, std, 255.0)
  return (tuple(float(v) for v in mean / 255.0),
          tuple(float(v) for v in std / 255.0))


# ---------------------------------------------------------------------------
# What to load: DataOptions, checked once.


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value: Any, field: str, minimum: int) -> int:
  if not _is_int(value) or value < minimum:
    raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_image_size(value: Any, field: str) -> tuple[int, int] | None:
  """None, an int (square) or an (h, w) pair of positive ints."""
  if value is None:
    return None
  if _is_int(value) and value > 0:
    return int(value), int(value)
  if (isinstance(value, (tuple, list)) and len(value) == 2
      and all(_is_int(v) and v > 0 for v in value)):
    return int(value[0]), int(value[1])
  raise ValueError(f"{field} must be a positive integer or a (height, width) "
                   f"pair, got {value!r}")


def _check_path(value: Any, field: str, what: str) -> str:
  if not isinstance(value, (str, os.PathLike)) or not str(value):
    raise ValueError(f"{field} must be the path of {what}, got {value!r}")
  path = os.path.expanduser(os.fspath(value))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{field}: {what} not found: {path}")
  return path


# How errors name the fields: they are config.data's.
_PREFIX = "config.data"
# Values of config.data that mean "not set" (None): ConfigDict fields are
# typed, so the project config holds "", 0 and "auto" instead of None.
_UNSET = {"name": "", "data_dir": "", "manual_dir": "", "path": "",
          "image_size": 0, "channels": 0, "augment": "auto"}


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """What `load_dataset` loads: config.data's dataset fields, checked.

  Attributes:
    source: one of SOURCES.
    name: TFDS name (one of TFDS_NAMES; required for, and only read by,
      source "tfds"). Other sources are named after the file/folder, or
      "digits" / "synthetic".
    data_dir: TFDS data_dir (None: TFDS's own default, $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    manual_dir: imagenet2012 only: a folder with ILSVRC2012_img_train.tar and
      ILSVRC2012_img_val.tar; when the dataset is not prepared yet and both
      tars are there, it is prepared (array_record, hours) from them.
    path: the .npz file (source "npz") or the folder root ("image_folder").
    image_size: None, an int or (h, w) (stored as (h, w)): image_folder
      resize target; imagenet2012 crop size (default 224); synthetic side
      (default 8).
    channels: None, 1 or 3: image_folder colour mode (default 3); synthetic
      (default 3).
    augment: None (the dataset's default) or one of AUGMENTS.
    label_noise: fraction of TRAINING labels flipped, in [0, 1).
    seed: seeds label noise and the synthetic data.
    num_train, num_test, num_classes: synthetic only.

  Raises (on construction):
    ValueError: a field has an invalid value; the message names the
      config.data field and the valid values.
  """
  source: str = "tfds"
  name: str | None = "cifar10"
  data_dir: str | None = None
  manual_dir: str | None = None
  path: str | None = None
  image_size: Any = None
  channels: int | None = None
  augment: str | None = None
  label_noise: float = 0.0
  seed: int = 0
  num_train: int = 512
  num_test: int = 256
  num_classes: int = 4

  def __post_init__(self):
    f = lambda name: f"{_PREFIX}.{name}"  # noqa: E731
    if self.source not in SOURCES:
      raise ValueError(f"{f('source')} must be one of {', '.join(SOURCES)}; "
                       f"got {self.source!r}")
    rate = self.label_noise
    if (not isinstance(rate, numbers.Real) or isinstance(rate, bool)
        or not 0.0 <= float(rate) < 1.0):
      raise ValueError(f"{f('label_noise')} must be a number in [0, 1), got "
                       f"{rate!r}")
    if self.augment is not None and self.augment not in AUGMENTS:
      raise ValueError(f"{f('augment')} must be one of {', '.join(AUGMENTS)} "
                       f"(or 'auto' for the dataset's default); got "
                       f"{self.augment!r}")
    if self.channels is not None and self.channels not in (1, 3):
      raise ValueError(f"{f('channels')} must be 1 or 3 (or 0: the "
                       f"default), got {self.channels!r}")
    if self.name is not None and not isinstance(self.name, str):
      raise ValueError(f"{f('name')} must be a string, got {self.name!r}")
    if self.source == "tfds" and self.name not in TFDS_NAMES:
      raise ValueError(f"{f('name')} must be one of {', '.join(TFDS_NAMES)} "
                       f"for {f('source')}='tfds'; got {self.name!r}")
    _check_int(self.seed, f("seed"), 0)
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
    set_("label_noise", float(rate))
    set_("image_size", _check_image_size(self.image_size, f("image_size")))
    if self.source == "synthetic":
      _check_int(self.num_train, f("num_train"), 1)
      _check_int(self.num_test, f("num_test"), 1)
      _check_int(self.num_classes, f("num_classes"), 2)

  @classmethod
  def from_mapping(cls, values: Any) -> "DataOptions":
    """From config.data (a ConfigDict) or a dict with some of the fields.

    "" / 0 / "auto" placeholders count as not set (None); fields that are
    not DataOptions' (e.g. config.data.normalization, read by train.py) are
    ignored.
    """
    items = values.items() if hasattr(values, "items") else vars(values).items()
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in items:
      if key not in fields:
        continue
      if key in _UNSET and not isinstance(value, bool) and (
          value == _UNSET[key] or value is None):
        value = None
      kwargs[key] = value
    return cls(**kwargs)


def load_dataset(options: DataOptions | Any) -> Dataset:
  """Builds the `Dataset` that `options` describe.

  Args:
    options: a DataOptions, or config.data / a dict of its fields (read by
      `DataOptions.from_mapping`).

  Returns:
    The dataset.

  Raises:
    ValueError: a field has an invalid value (the message names the field and
      the valid values).
    FileNotFoundError: a file/folder/prepared TFDS dataset is missing (the
      message names the field, the path and how to fix it).
  """
  from acs_jax.data import sources  # pylint: disable=g-import-not-at-top
  if not isinstance(options, DataOptions):
    options = DataOptions.from_mapping(options)
  load = {"tfds": sources.load_tfds, "npz": sources.load_npz,
          "image_folder": sources.load_image_folder,
          "digits": lambda _: sources.load_digits(),
          "synthetic": sources.load_synthetic}[options.source]
  ds = load(options)
  if options.augment is not None and options.augment != ds.augment:
    ds = _with_augment(ds, options.augment, _PREFIX)
  if options.label_noise > 0:
    ds = with_label_noise(ds, options.label_noise, options.seed)
  return ds


def _with_augment(ds: Dataset, augment: str, prefix: str) -> Dataset:
  if augment == "imagenet" and ds.in_memory:
    raise ValueError(f'{prefix}.augment "imagenet" needs a random-access '
                     f'dataset (tfds imagenet2012); for {ds.name!r} use one '
                     'of "cifar", "crop", "none"')
  if ds.augment == "imagenet" and augment != "none":
    raise ValueError(f'{prefix}.augment for {ds.name!r} must be "imagenet" or '
                     f'"none", got {augment!r}')
  padding, pad_mode = ds.crop_padding, ds.pad_mode
  if augment in ("cifar", "crop") and padding == 0:
    padding, pad_mode = _default_padding(ds.image_shape)
  return dataclasses.replace(ds, augment=augment, crop_padding=padding,
                             pad_mode=pad_mode)


def with_label_noise(ds: Dataset, rate: float, seed: int) -> Dataset:
  """A copy of `ds` with symmetric noise on its training labels.

  Args:
    ds: a dataset without label noise.
    rate: in [0, 1).
    seed: non-negative int.

  Returns:
    The dataset with y_train noisy, y_train_clean the true labels (in memory)
    and label_offsets set (both kinds).
  """
  if ds.label_noise:
    raise ValueError(f"dataset {ds.name!r} already has label noise")
  offsets = label_noise_offsets(ds.num_train, rate, ds.num_classes, seed)
  kwargs = {"label_noise": float(rate), "label_offsets": offsets}
  if ds.in_memory:
    clean = ds.y_train_clean if ds.y_train_clean is not None else ds.y_train
    kwargs["y_train_clean"] = clean
    kwargs["y_train"] = shift_labels(clean, offsets, ds.num_classes)
  return dataclasses.replace(ds, **kwargs)


def _default_padding(image_shape: Sequence[int]) -> tuple[int, str]:
  """Crop padding for user data: 1/8 of the side (4 for 32x32), reflected."""
  return max(1, min(image_shape[0], image_shape[1]) // 8), "reflect"


def _in_memory(name: str, x_train: np.ndarray, y_train: np.ndarray,
               x_test: np.ndarray, y_test: np.ndarray, num_classes: int,
               class_names: Sequence[str] | None, augment: str,
               crop_padding: int, pad_mode: str) -> Dataset:
  """Assembles an in-memory Dataset, computing mean/std from x_train."""
  mean, std = channel_stats(x_train)
  if class_names is None:
    class_names = [str(i) for i in range(num_classes)]
  return Dataset(
      name=name, num_classes=int(num_classes),
      image_shape=tuple(int(s) for s in x_train.shape[1:]),
      mean=mean, std=std, num_train=len(x_train), num_test=len(x_test),
      class_names=tuple(str(c) for c in class_names), augment=augment,
      crop_padding=crop_padding, pad_mode=pad_mode,
      x_train=x_train, y_train=y_train.astype(np.int32),
      x_test=x_test, y_test=y_test.astype(np.int32),
      y_train_clean=y_train.astype(np.int32))


def _user_augment(image_shape: Sequence[int]) -> tuple[str, int, str]:
  """Default augmentation of npz / image-folder data.

  Colour images get the CIFAR recipe; grey-scale ones are often digits, which
  must not be mirrored, so they get crops only.
  """
  padding, pad_mode = _default_padding(image_shape)
  return ("cifar" if image_shape[-1] == 3 else "crop"), padding, pad_mode
