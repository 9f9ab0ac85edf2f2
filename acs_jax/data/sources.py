"""The sources `datasets.load_dataset` reads: TFDS, .npz, image folders,
the embedded digits and the synthetic task (config.data.source).

Each `load_*(options)` returns a `datasets.Dataset`; errors name the
config.data field and the fix (this code never downloads).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from acs_jax import env
from acs_jax.data.datasets import (DataOptions, Dataset, _IMAGENET_MEAN,
                                    _IMAGENET_STD, _PREFIX, _check_path,
                                    _default_padding, _in_memory,
                                    _user_augment)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Records read per batch when copying a small TFDS dataset into memory. An
# explicit size: batch_size=-1 aborts the process under tfds mock data and
# makes TF build one giant batch (DEPENDENCIES.md pitfall P4).
_TFDS_READ_BATCH = 10_000
# Digits: 1797 samples, split 1437 train / 360 test (20%), stratified by class.
# The split uses a fixed seed, NOT config.data.seed, so that runs with
# different training seeds are evaluated on the same test set.
DIGITS_NUM_TEST = 360
_DIGITS_SPLIT_SEED = 0
_IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
# name -> (augment, crop padding, pad mode) for the TFDS datasets. Digit and
# grey-scale datasets are not mirror-symmetric, hence "crop" (no flip); MNIST
# backgrounds are black, so zero padding looks like more background.
_TFDS_AUGMENT = {
    "cifar10": ("cifar", 4, "reflect"),
    "cifar100": ("cifar", 4, "reflect"),
    "svhn_cropped": ("crop", 4, "reflect"),
    "mnist": ("crop", 2, "constant"),
    "fashion_mnist": ("crop", 2, "constant"),
    "imagenet2012": ("imagenet", 0, "reflect"),
}
# The test split of each TFDS dataset (imagenet2012 has no labelled "test").
_TFDS_TEST_SPLIT = {"imagenet2012": "validation"}



# ---------------------------------------------------------------------------
# TFDS.


def _tfds():
  """tensorflow_datasets, with TensorFlow first kept off the accelerators."""
  env.hide_gpus_from_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _tfds_not_prepared(name: str, data_dir_root: str, field: str) -> str:
  if name == "imagenet2012":
    how = (
        "ImageNet cannot be downloaded automatically. Put "
        f"{' and '.join(_IMAGENET_TARS)} in a folder, set "
        f"config.data.manual_dir to it and load again (prepares the data in "
        "array_record format; takes hours), or run on any machine: "
        f"`tfds build imagenet2012 --data_dir={data_dir_root} "
        "--manual_dir=<folder with the tars> --file_format=array_record`.")
  else:
    how = (f"Prepare it on a machine with internet access: `tfds build {name} "
           f"--data_dir={data_dir_root}` (or tfds.builder({name!r}, "
           f"data_dir=...).download_and_prepare()), then copy that folder "
           f"here and point {field} at it.")
  return (f"TFDS dataset {name!r} is not prepared in {field}={data_dir_root!r} "
          f"(TFDS looked in that folder). This code never downloads. {how}")


def load_tfds(opts: DataOptions) -> Dataset:
  prefix = _PREFIX
  name = opts.name
  data_dir = opts.data_dir
  if data_dir is not None:
    data_dir = _check_path(data_dir, f"{prefix}.data_dir", "the TFDS data_dir")
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    manual_dir = opts.manual_dir
    if name == "imagenet2012" and manual_dir is not None:
      builder = _prepare_imagenet(builder, manual_dir, prefix)
    else:
      raise FileNotFoundError(_tfds_not_prepared(
          name, str(builder.data_dir_root), f"{prefix}.data_dir"))
  if name == "imagenet2012":
    return _load_tfds_random_access(builder, name, opts.image_size,
                                    f"{prefix}.data_dir")
  augment, padding, pad_mode = _TFDS_AUGMENT[name]
  return load_tfds_in_memory(builder, name, augment, padding, pad_mode)


def _prepare_imagenet(builder: Any, manual_dir: Any, prefix: str) -> Any:
  """Prepares imagenet2012 (array_record) from the tars in manual_dir.

  Returns:
    The builder of the prepared dataset.
  """
  manual_dir = _check_path(manual_dir, f"{prefix}.manual_dir",
                           "the ImageNet manual download folder")
  missing = [t for t in _IMAGENET_TARS
             if not os.path.exists(os.path.join(manual_dir, t))]
  if missing:
    raise FileNotFoundError(
        f"{prefix}.manual_dir={manual_dir!r} lacks {', '.join(missing)} "
        "(download them from https://image-net.org after registering). "
        + _tfds_not_prepared("imagenet2012", str(builder.data_dir_root),
                             f"{prefix}.data_dir"))
  tfds = _tfds()
  logging.warning("Preparing imagenet2012 from %s into %s (array_record); "
                  "this takes hours and ~150 GB.", manual_dir,
                  builder.data_dir_root)
  data_dir = str(builder.data_dir_root)
  builder = tfds.builder("imagenet2012", data_dir=data_dir,
                         file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_tfds_in_memory(builder: Any, name: str, augment: str,
                        crop_padding: int, pad_mode: str) -> Dataset:
  """Copies a prepared (small) TFDS dataset's train/test splits into memory.

  Args:
    builder: a prepared tfds builder with supervised keys (image, label) and
      fixed-size uint8 images.
    name: dataset name.
    augment, crop_padding, pad_mode: see Dataset.

  Returns:
    An in-memory Dataset.
  """
  tfds = _tfds()
  arrays = {}
  for split in ("train", _TFDS_TEST_SPLIT.get(name, "test")):
    ds = builder.as_dataset(split=split, as_supervised=True,
                            batch_size=_TFDS_READ_BATCH, shuffle_files=False)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds):
      xs.append(x)
      ys.append(y)
    x = np.concatenate(xs).astype(np.uint8, copy=False)
    if x.ndim == 3:
      x = x[..., None]
    arrays[split] = (x, np.concatenate(ys).astype(np.int32))
  (x_train, y_train), (x_test, y_test) = arrays.values()
  label = builder.info.features["label"]
  return _in_memory(name, x_train, y_train, x_test, y_test,
                    label.num_classes, label.names, augment, crop_padding,
                    pad_mode)


def _load_tfds_random_access(builder: Any, name: str,
                             image_size: tuple[int, int] | None,
                             field: str) -> Dataset:
  """Wraps a prepared array_record TFDS dataset as random-access sources."""
  tfds = _tfds()
  fmt = builder.info.file_format
  fmt_name = getattr(fmt, "value", str(fmt))
  if fmt_name != "array_record":
    raise ValueError(
        f"{name} in {field}={str(builder.data_dir_root)!r} is prepared in "
        f"{fmt_name!r} format, but random access (reading only the coreset) "
        "needs 'array_record'. Rebuild it: `tfds build "
        f"{name} --data_dir=<new dir> --file_format=array_record` (or "
        "`tfds convert_format --root_data_dir=... "
        "--out_file_format=array_record`).")
  # SkipDecoding: the records keep their JPEG bytes; tf.data decodes them in
  # parallel (and only the crop window) instead of PIL in Python.
  decoders = {"image": tfds.decode.SkipDecoding()}
  train = builder.as_data_source("train", decoders=decoders)
  test = builder.as_data_source(_TFDS_TEST_SPLIT.get(name, "test"),
                                decoders=decoders)
  label = builder.info.features["label"]
  h, w = image_size or (224, 224)
  return Dataset(
      name=name, num_classes=label.num_classes, image_shape=(h, w, 3),
      mean=_IMAGENET_MEAN, std=_IMAGENET_STD, num_train=len(train),
      num_test=len(test), class_names=tuple(label.names), augment="imagenet",
      train_source=train, test_source=test)


# ---------------------------------------------------------------------------
# npz.


def load_npz(opts: DataOptions) -> Dataset:
  prefix = _PREFIX
  path = _check_path(opts.path, f"{prefix}.path", "the .npz file")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{prefix}.path={path!r} is not a readable .npz file: "
                     f"{e}") from e
  with data:
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test")
               if k not in data.files]
    if missing:
      raise ValueError(f"{prefix}.path={path!r} lacks the arrays "
                       f"{', '.join(missing)} (has {', '.join(data.files)})")
    arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    class_names = (list(map(str, data["class_names"]))
                   if "class_names" in data.files else None)
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.dtype != np.uint8:
      raise ValueError(f"{prefix}.path: x_{split} must be uint8 images, got "
                       f"{x.dtype}")
    if x.ndim == 3:  # grey-scale [N, H, W]
      x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"{prefix}.path: x_{split} must be [N,H,W] or "
                       f"[N,H,W,C] with C in (1, 3), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype,
                                                           np.integer):
      raise ValueError(f"{prefix}.path: y_{split} must be integer [{len(x)}], "
                       f"got {y.dtype} {y.shape}")
    arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise ValueError(f"{prefix}.path: x_train and x_test image shapes differ: "
                     f"{arrays['x_train'].shape[1:]} vs "
                     f"{arrays['x_test'].shape[1:]}")
  all_labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
  num_classes = (len(class_names) if class_names is not None
                 else int(all_labels.max()) + 1)
  if all_labels.min() < 0 or all_labels.max() >= num_classes:
    raise ValueError(f"{prefix}.path: labels must be in [0, {num_classes}), "
                     f"got [{all_labels.min()}, {all_labels.max()}]")
  empty = np.flatnonzero(np.bincount(arrays["y_train"],
                                     minlength=num_classes) == 0)
  if len(empty) and class_names is None:
    shown = ", ".join(map(str, empty[:8])) + (" ..." if len(empty) > 8 else "")
    raise ValueError(
        f"{prefix}.path={path!r}: without class_names the labels imply "
        f"{num_classes} classes (0..{num_classes - 1}), but {len(empty)} of "
        f"them have no training sample ({shown}); relabel to consecutive "
        "classes, or add class_names to the .npz to declare the classes")
  if len(empty):
    logging.warning("%s.path: classes %s of class_names have no training "
                    "sample", prefix, empty.tolist())
  name = os.path.splitext(os.path.basename(path))[0]
  augment, padding, pad_mode = _user_augment(arrays["x_train"].shape[1:])
  return _in_memory(name, arrays["x_train"], arrays["y_train"],
                    arrays["x_test"], arrays["y_test"], num_classes,
                    class_names, augment, padding, pad_mode)


# ---------------------------------------------------------------------------
# Image folder.

_TEST_DIR_NAMES = ("test", "val", "validation")


def _list_images(split_dir: str) -> dict[str, list[str]]:
  """{class name: sorted image paths} of one split folder."""
  out = {}
  for cls in sorted(os.listdir(split_dir)):
    cls_dir = os.path.join(split_dir, cls)
    if not os.path.isdir(cls_dir):
      continue
    files = sorted(
        os.path.join(cls_dir, f) for f in os.listdir(cls_dir)
        if f.lower().endswith(IMAGE_EXTENSIONS))
    out[cls] = files
  return out


def _read_images(paths: list[str], mode: str,
                 size: tuple[int, int] | None, field: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = []
  for p in paths:
    with Image.open(p) as im:
      im = im.convert(mode)
      if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
      images.append(np.asarray(im, dtype=np.uint8))
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(f"images have different sizes ({sorted(shapes)[:3]}...); "
                     f"set {field} to resize them")
  x = np.stack(images)
  return x[..., None] if x.ndim == 3 else x


def load_image_folder(opts: DataOptions) -> Dataset:
  prefix = _PREFIX
  root = _check_path(opts.path, f"{prefix}.path",
                     "the image folder root")
  train_dir = os.path.join(root, "train")
  test_dirs = [os.path.join(root, d) for d in _TEST_DIR_NAMES]
  test_dir = next((d for d in test_dirs if os.path.isdir(d)), None)
  if not os.path.isdir(train_dir) or test_dir is None:
    raise FileNotFoundError(
        f"{prefix}.path={root!r} must hold train/<class>/<images> and "
        f"test/<class>/<images> (or val/, validation/); found "
        f"{sorted(os.listdir(root))}")
  train = _list_images(train_dir)
  test = _list_images(test_dir)
  class_names = sorted(train)
  if not class_names or not any(train.values()):
    raise FileNotFoundError(f"{prefix}.path: no images ({IMAGE_EXTENSIONS}) "
                            f"in class folders under {train_dir}")
  unknown = sorted(set(test) - set(class_names))
  if unknown:
    raise ValueError(f"{prefix}.path: {test_dir} has classes not in "
                     f"{train_dir}: {unknown}")
  mode = "L" if opts.channels == 1 else "RGB"
  size = opts.image_size
  arrays = []
  for split in (train, test):
    paths = [p for c in class_names for p in split.get(c, [])]
    labels = [i for i, c in enumerate(class_names)
              for _ in split.get(c, [])]
    if not paths:
      raise FileNotFoundError(f"{prefix}.path: no images in {test_dir}")
    arrays.append((_read_images(paths, mode, size, f"{prefix}.image_size"),
                   np.asarray(labels, np.int32)))
  (x_train, y_train), (x_test, y_test) = arrays
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f"train and test images differ in size; set "
                     f"{prefix}.image_size")
  name = os.path.basename(os.path.normpath(root))
  augment, padding, pad_mode = _user_augment(x_train.shape[1:])
  return _in_memory(name, x_train, y_train, x_test, y_test, len(class_names),
                    class_names, augment, padding, pad_mode)


# ---------------------------------------------------------------------------
# Digits (embedded) and synthetic.


def load_digits() -> Dataset:
  """scikit-learn's 8x8 digits: 1437 train / 360 test, stratified, fixed.

  Pixel values 0..16 are scaled to 0..255. Training augmentation: random crop
  with 1 pixel of zero padding (the background is 0), no flip.
  """
  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  # pylint: enable=g-import-not-at-top
  digits = load_digits()
  x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  y = digits.target.astype(np.int32)
  train_idx, test_idx = train_test_split(
      np.arange(len(y)), test_size=DIGITS_NUM_TEST, stratify=y,
      random_state=_DIGITS_SPLIT_SEED)
  # Sorted so the sample index follows the original order.
  train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
  return _in_memory("digits", x[train_idx], y[train_idx],
                    x[test_idx], y[test_idx], 10, [str(i) for i in range(10)],
                    "crop", 1, "constant")


def load_synthetic(opts: DataOptions) -> Dataset:
  """Seeded easy task: a fixed +-1 pattern per class plus Gaussian noise.

  Pixel = clip(128 + 48 * pattern[label] + N(0, 32^2)). The class signal per
  pixel is 1.5 noise sigmas, over H*W*C pixels, so even a linear model
  separates the classes after a few steps. Labels are balanced (i % K,
  shuffled). Default augmentation "none" (crops would shift the patterns).
  """
  num_train, num_test = opts.num_train, opts.num_test
  num_classes = opts.num_classes
  h, w = opts.image_size or (8, 8)
  c = opts.channels or 3
  rng = np.random.default_rng([opts.seed, 0x5717])
  patterns = rng.choice(np.array([-1.0, 1.0]), size=(num_classes, h, w, c))

  def make(n):
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    x = 128.0 + 48.0 * patterns[y] + rng.normal(0.0, 32.0, (n, h, w, c))
    return np.clip(np.round(x), 0, 255).astype(np.uint8), y

  x_train, y_train = make(num_train)
  x_test, y_test = make(num_test)
  padding, pad_mode = _default_padding((h, w))
  return _in_memory("synthetic", x_train, y_train, x_test,
                    y_test, num_classes, None, "none", padding, pad_mode)
