"""Tests for acs_jax.data.datasets: sources, validation, label noise."""
import io
import os
import tarfile
import time
from unittest import mock

import ml_collections
import numpy as np
import pytest
from PIL import Image

from acs_jax import data
from acs_jax.data import datasets
from acs_jax.data import sources


def _cfg(**kwargs):
  return ml_collections.ConfigDict(kwargs)


# ---------------------------------------------------------------------------
# Embedded and synthetic sources.


def test_digits_shapes_classes_and_fixed_split():
  ds = data.load_dataset(_cfg(source="digits"))
  assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (360, 8, 8, 1)
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
  assert ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
  assert (ds.num_train, ds.num_test) == (1437, 360)
  assert ds.x_train.max() == 255  # 0..16 scaled to 0..255
  assert ds.augment == "crop" and ds.crop_padding == 1
  assert ds.pad_mode == "constant"
  # Stratified: every class has 36 +- 1 test samples.
  counts = np.bincount(ds.y_test, minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37
  # The split is fixed, whatever the training seed.
  again = data.load_dataset(_cfg(source="digits", seed=7))
  np.testing.assert_array_equal(ds.x_test, again.x_test)
  np.testing.assert_array_equal(ds.y_train, again.y_train)
  # mean/std match a direct float64 computation.
  x = ds.x_train.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-12)


def test_synthetic_deterministic_and_easy():
  cfg = _cfg(source="synthetic", num_train=300, num_test=100, num_classes=5,
             image_size=6, channels=1, seed=3)
  ds = data.load_dataset(cfg)
  assert ds.x_train.shape == (300, 6, 6, 1) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (100, 6, 6, 1)
  assert ds.num_classes == 5 and len(ds.class_names) == 5
  np.testing.assert_array_equal(np.bincount(ds.y_train), [60] * 5)
  again = data.load_dataset(cfg)
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  np.testing.assert_array_equal(ds.y_test, again.y_test)
  cfg.seed = 4
  other = data.load_dataset(cfg)
  assert not np.array_equal(ds.x_train, other.x_train)
  # Easy: nearest class mean on the test set is far above chance (20%).
  x_tr = ds.x_train.reshape(300, -1).astype(np.float64)
  means = np.stack([x_tr[ds.y_train == k].mean(0) for k in range(5)])
  x_te = ds.x_test.reshape(100, -1).astype(np.float64)
  pred = np.argmin(((x_te[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (pred == ds.y_test).mean() > 0.9


# ---------------------------------------------------------------------------
# npz and image folders.


def test_npz_round_trip_grayscale_and_class_names(tmp_path):
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (20, 5, 7), dtype=np.uint8)
  x_test = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
  y_train = rng.integers(0, 3, 20).astype(np.int64)
  y_test = np.array([0, 1, 2, 0, 1, 2], np.uint8)
  path = tmp_path / "tiny.npz"
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test,
           y_test=y_test, class_names=np.array(["a", "b", "c"]))
  ds = data.load_dataset(_cfg(source="npz", path=str(path)))
  assert ds.name == "tiny" and ds.class_names == ("a", "b", "c")
  assert ds.num_classes == 3 and ds.image_shape == (5, 7, 1)
  np.testing.assert_array_equal(ds.x_train[..., 0], x_train)
  np.testing.assert_array_equal(ds.x_test[..., 0], x_test)
  np.testing.assert_array_equal(ds.y_train, y_train)
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
  x = x_train.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-12)
  assert ds.augment == "crop"  # grey-scale: no flips by default


def test_npz_rgb_stats_and_bad_contents(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
  good = tmp_path / "rgb.npz"
  np.savez(good, x_train=x, y_train=np.arange(10) % 2, x_test=x[:3],
           y_test=np.zeros(3, np.int32))
  ds = data.load_dataset(_cfg(source="npz", path=str(good), name="cifar10"))
  assert ds.name == "rgb"  # `name` is only read for source "tfds"
  assert ds.num_classes == 2 and ds.augment == "cifar"
  xf = x.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, xf.mean((0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(ds.std, xf.std((0, 1, 2)), rtol=1e-12)
  bad = tmp_path / "bad.npz"
  np.savez(bad, x_train=x.astype(np.float32), y_train=np.zeros(10),
           x_test=x, y_test=np.zeros(3))
  with pytest.raises(ValueError, match="x_train must be uint8"):
    data.load_dataset(_cfg(source="npz", path=str(bad)))
  partial = tmp_path / "partial.npz"
  np.savez(partial, x_train=x, y_train=np.zeros(10))
  with pytest.raises(ValueError, match="lacks the arrays x_test, y_test"):
    data.load_dataset(_cfg(source="npz", path=str(partial)))


def _write_image(path, array, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def test_image_folder(tmp_path):
  rng = np.random.default_rng(0)
  images = {}
  for split, n in (("train", 3), ("test", 2)):
    for cls in ("dog", "cat"):
      for i in range(n):
        arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        path = tmp_path / split / cls / f"{i}.png"
        _write_image(str(path), arr, "PNG")
        images[(split, cls, i)] = arr
  # A JPEG and a stray non-image file are handled / ignored.
  _write_image(str(tmp_path / "train" / "dog" / "z.jpg"),
               np.full((6, 5, 3), 128, np.uint8), "JPEG")
  (tmp_path / "train" / "dog" / "notes.txt").write_text("ignore me")
  ds = data.load_dataset(_cfg(source="image_folder", path=str(tmp_path)))
  assert ds.class_names == ("cat", "dog")  # sorted folder names
  assert ds.num_train == 7 and ds.num_test == 4
  assert ds.image_shape == (6, 5, 3)
  # Lossless PNGs come back exactly, in (class, file name) order.
  np.testing.assert_array_equal(ds.x_train[0], images[("train", "cat", 0)])
  np.testing.assert_array_equal(ds.x_train[3], images[("train", "dog", 0)])
  np.testing.assert_array_equal(ds.x_test[3], images[("test", "dog", 1)])
  np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(ds.y_test, [0, 0, 1, 1])
  # Resized and grey-scale.
  small = data.load_dataset(_cfg(source="image_folder", path=str(tmp_path),
                                 image_size=4, channels=1))
  assert small.x_train.shape == (7, 4, 4, 1)
  assert small.x_test.shape == (4, 4, 4, 1)


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
  _write_image(str(tmp_path / "train/a/0.png"), np.zeros((4, 4, 3), np.uint8),
               "PNG")
  _write_image(str(tmp_path / "train/a/1.png"), np.zeros((5, 4, 3), np.uint8),
               "PNG")
  _write_image(str(tmp_path / "test/a/0.png"), np.zeros((4, 4, 3), np.uint8),
               "PNG")
  with pytest.raises(ValueError, match="config.data.image_size"):
    data.load_dataset(_cfg(source="image_folder", path=str(tmp_path)))
  ds = data.load_dataset(_cfg(source="image_folder", path=str(tmp_path),
                              image_size=(3, 2)))
  assert ds.x_train.shape == (2, 3, 2, 3)


def test_image_folder_without_test_split(tmp_path):
  _write_image(str(tmp_path / "train/a/0.png"), np.zeros((4, 4, 3), np.uint8),
               "PNG")
  with pytest.raises(FileNotFoundError, match="config.data.path"):
    data.load_dataset(_cfg(source="image_folder", path=str(tmp_path)))


# ---------------------------------------------------------------------------
# Label noise.


def test_apply_label_noise_rate_classes_determinism():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 5000)
  noisy = data.apply_label_noise(labels, 0.3, 10, seed=1)
  flipped = noisy != labels
  assert flipped.sum() == 1500  # exactly round(rate * N)
  assert noisy.dtype == np.int32 and noisy.min() >= 0 and noisy.max() < 10
  np.testing.assert_array_equal(noisy,
                                data.apply_label_noise(labels, 0.3, 10, 1))
  assert not np.array_equal(noisy, data.apply_label_noise(labels, 0.3, 10, 2))
  # Uniform over the 9 other classes: each (true, noisy) pair appears.
  pairs = np.zeros((10, 10), int)
  np.add.at(pairs, (labels[flipped], noisy[flipped]), 1)
  off_diag = pairs[~np.eye(10, dtype=bool)]
  assert off_diag.min() > 0 and off_diag.max() < 3 * off_diag.mean()
  np.testing.assert_array_equal(data.apply_label_noise(labels, 0.0, 10, 1),
                                labels)
  # Two classes: a flip must go to the other one.
  two = data.apply_label_noise(np.zeros(100, int), 0.5, 2, seed=0)
  assert two.sum() == 50


def test_load_dataset_label_noise_only_on_train():
  clean = data.load_dataset(_cfg(source="digits"))
  noisy = data.load_dataset(_cfg(source="digits", label_noise=0.25, seed=5))
  np.testing.assert_array_equal(noisy.y_train_clean, clean.y_train)
  np.testing.assert_array_equal(noisy.y_test, clean.y_test)
  changed = noisy.y_train != clean.y_train
  assert changed.sum() == round(0.25 * 1437)
  np.testing.assert_array_equal(noisy.noisy_mask, changed)
  assert noisy.label_noise == 0.25
  np.testing.assert_array_equal(
      noisy.y_train, data.apply_label_noise(clean.y_train, 0.25, 10, 5))
  assert not clean.noisy_mask.any()


# ---------------------------------------------------------------------------
# Config validation.


@pytest.mark.parametrize("fields,error,pattern", [
    (dict(source="csv"), ValueError,
     r"config\.data\.source must be one of tfds, npz, image_folder, digits, "
     r"synthetic; got 'csv'"),
    (dict(source="tfds", name="cifar11"), ValueError,
     r"config\.data\.name must be one of cifar10, .*imagenet2012"),
    (dict(source="tfds", name=""), ValueError,
     r"config\.data\.name must be one of"),
    (dict(source="digits", label_noise=1.0), ValueError,
     r"config\.data\.label_noise must be a number in \[0, 1\), got 1\.0"),
    (dict(source="digits", label_noise=-0.1), ValueError,
     r"config\.data\.label_noise"),
    (dict(source="digits", label_noise="a lot"), ValueError,
     r"config\.data\.label_noise"),
    (dict(source="digits", augment="mixup"), ValueError,
     r"config\.data\.augment must be one of cifar, crop, imagenet, none"),
    (dict(source="digits", augment="imagenet"), ValueError,
     r"config\.data\.augment \"imagenet\" needs a random-access"),
    (dict(source="digits", seed=-1), ValueError,
     r"config\.data\.seed must be an integer >= 0"),
    (dict(source="synthetic", num_classes=1), ValueError,
     r"config\.data\.num_classes must be an integer >= 2"),
    (dict(source="synthetic", image_size=-3), ValueError,
     r"config\.data\.image_size must be a positive integer"),
    (dict(source="synthetic", channels=2), ValueError,
     r"config\.data\.channels must be 1 or 3"),
    (dict(source="npz"), ValueError,
     r"config\.data\.path must be the path of the \.npz file"),
    (dict(source="npz", path="/no/such/file.npz"), FileNotFoundError,
     r"config\.data\.path: the \.npz file not found: /no/such/file\.npz"),
    (dict(source="image_folder", path="/no/such/dir"), FileNotFoundError,
     r"config\.data\.path: the image folder root not found: /no/such/dir"),
    (dict(source="tfds", name="cifar10", data_dir="/no/such/tfds"),
     FileNotFoundError, r"config\.data\.data_dir: .*/no/such/tfds"),
])
def test_bad_config_values(fields, error, pattern):
  with pytest.raises(error, match=pattern):
    data.load_dataset(_cfg(**fields))


def test_plain_dict_and_attribute_configs():
  ds = data.load_dataset({"source": "synthetic", "num_train": 10,
                          "num_test": 4})
  assert ds.num_train == 10
  with pytest.raises(ValueError, match=r"config\.data\.source must be one "
                     r"of tfds, npz"):
    data.load_dataset({"source": "nope"})
  opts = datasets.DataOptions(source="synthetic", num_train=10, num_test=4,
                              image_size=6)
  assert opts.image_size == (6, 6)
  assert data.load_dataset(opts).image_shape == (6, 6, 3)


def test_placeholder_values_count_as_unset():
  # The project config cannot hold None in typed fields; it uses "", 0 and
  # "auto" instead.
  cfg = _cfg(source="synthetic", name="cifar10", data_dir="", manual_dir="",
             path="", image_size=0, channels=0, augment="auto",
             label_noise=0.0, seed=0, num_train=30, num_test=10,
             num_classes=4)
  ds = data.load_dataset(cfg)
  assert ds.name == "synthetic" and ds.image_shape == (8, 8, 3)
  assert ds.augment == "none" and ds.num_classes == 4
  opts = datasets.DataOptions.from_mapping(cfg)
  for field in ("data_dir", "manual_dir", "path", "image_size", "channels",
                "augment"):
    assert getattr(opts, field) is None, field


def test_base_config_data_defaults_are_the_options_defaults():
  from acs_jax import config_lib  # pylint: disable=g-import-not-at-top
  base = config_lib.data_options(config_lib.get_base_config().data)
  assert base == datasets.DataOptions()


def test_augment_override():
  ds = data.load_dataset(_cfg(source="synthetic", augment="cifar",
                              image_size=16))
  assert ds.augment == "cifar" and ds.crop_padding == 2
  ds = data.load_dataset(_cfg(source="digits", augment="none"))
  assert ds.augment == "none"


# ---------------------------------------------------------------------------
# TFDS.


@pytest.mark.parametrize("name", ["cifar10", "svhn_cropped"])
def test_tfds_not_prepared_fails_fast(tmp_path, name):
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as info:
    data.load_dataset(_cfg(source="tfds", name=name, data_dir=str(tmp_path)))
  assert time.monotonic() - start < 10
  msg = str(info.value)
  assert str(tmp_path) in msg and "config.data.data_dir" in msg
  assert f"tfds build {name} --data_dir={tmp_path}" in msg
  assert "never downloads" in msg


def test_tfds_imagenet_not_prepared_mentions_manual_dir(tmp_path):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  with pytest.raises(FileNotFoundError) as info:
    data.load_dataset(_cfg(source="tfds", name="imagenet2012",
                           data_dir=str(data_dir)))
  msg = str(info.value)
  assert str(data_dir) in msg and "config.data.manual_dir" in msg
  assert "ILSVRC2012_img_train.tar" in msg and "array_record" in msg
  # A manual_dir without the tars: the missing files are named.
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(FileNotFoundError,
                     match=r"config\.data\.manual_dir=.*lacks "
                     r"ILSVRC2012_img_train\.tar, ILSVRC2012_img_val\.tar"):
    data.load_dataset(_cfg(source="tfds", name="imagenet2012",
                           data_dir=str(data_dir), manual_dir=str(manual)))


@pytest.mark.parametrize("name,shape,augment", [
    ("cifar10", (32, 32, 3), "cifar"),
    ("mnist", (28, 28, 1), "crop"),
])
def test_tfds_small_dataset_loads_into_memory(name, shape, augment):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # mock_data fakes the records but not is_prepared(), which we check first.
  with tfds.testing.mock_data(num_examples=12), mock.patch.object(
      tfds.core.DatasetBuilder, "is_prepared", return_value=True):
    ds = data.load_dataset(_cfg(source="tfds", name=name))
  assert ds.in_memory and ds.name == name
  assert ds.x_train.shape == (12, *shape) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (12, *shape) and ds.y_test.dtype == np.int32
  assert ds.num_classes == 10 and ds.augment == augment


def _jpeg(rng, shape):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
      buf, format="JPEG")
  return buf.getvalue()


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_fake_imagenet_tars(manual_dir, rng, synsets=("n01440764",
                                                       "n01443537"),
                             per_class=3, num_val=4, shape_fn=None):
  """Tiny ILSVRC2012 train/val tars in the layout the TFDS builder reads."""
  shape_fn = shape_fn or (lambda k: (20 + k, 30, 3))
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"),
                    "w") as train:
    for syn in synsets:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as sub:
        for k in range(per_class):
          _add(sub, f"{syn}_{k}.JPEG", _jpeg(rng, shape_fn(k)))
      _add(train, f"{syn}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"),
                    "w") as val:
    for k in range(1, num_val + 1):
      _add(val, f"ILSVRC2012_val_{k:08d}.JPEG", _jpeg(rng, (25, 27, 3)))


def test_tfds_imagenet_prepared_from_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_fake_imagenet_tars(str(manual), np.random.default_rng(0))
  cfg = _cfg(source="tfds", name="imagenet2012", data_dir=str(tmp_path),
             manual_dir=str(manual), image_size=16)
  ds = data.load_dataset(cfg)
  assert not ds.in_memory and ds.augment == "imagenet"
  assert (ds.num_train, ds.num_test, ds.num_classes) == (6, 4, 1000)
  assert ds.image_shape == (16, 16, 3)
  assert ds.mean == datasets._IMAGENET_MEAN
  record = ds.train_source[0]
  assert isinstance(record["image"], bytes)  # kept encoded (SkipDecoding)
  assert int(record["label"]) in (0, 1)
  # Loaded again without manual_dir: already prepared (array_record).
  cfg.manual_dir = None
  assert data.load_dataset(cfg).num_train == 6


def test_tfds_tfrecord_imagenet_says_array_record_is_needed(tmp_path):
  builder = mock.Mock()
  builder.info.file_format = mock.Mock(value="tfrecord")
  builder.data_dir_root = str(tmp_path)
  with pytest.raises(ValueError, match=r"'tfrecord' format.*array_record"):
    sources._load_tfds_random_access(builder, "imagenet2012", None,
                                      "config.data.data_dir")
