"""Tests for acs_jax.data.input_pipeline (tf.data over coreset indices)."""
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from acs_jax import data
from acs_jax.data import augment as aug

N = 203  # not a multiple of any batch size used below


@pytest.fixture(scope="module")
def synth():
  """A small in-memory dataset with CIFAR-style augmentation."""
  return data.load_dataset({"source": "synthetic", "num_train": N,
                            "num_test": 37, "num_classes": 7, "image_size": 8,
                            "augment": "cifar", "seed": 1})


def _normalised(ds, x):
  return ((x.astype(np.float64) / 255 - np.asarray(ds.mean))
          / np.asarray(ds.std)).astype(np.float32)


def _epoch(ds, indices, **kwargs):
  return list(data.make_train_iterator(ds, indices, **kwargs))


def _cat(batches, key):
  return np.concatenate([b[key] for b in batches])


# ---------------------------------------------------------------------------
# Training iterator.


def test_each_selected_index_once_per_epoch(synth):
  rng = np.random.default_rng(0)
  indices = rng.choice(N, 150, replace=False)
  batches = _epoch(synth, indices, global_batch=16, seed=0, epoch=0)
  assert len(batches) == data.steps_per_epoch(150, 16) == 9
  seen = _cat(batches, "index")
  assert len(seen) == 144 and len(set(seen.tolist())) == 144
  dropped = set(indices.tolist()) - set(seen.tolist())
  assert len(dropped) == 150 % 16
  assert set(seen.tolist()) <= set(indices.tolist())
  for b in batches:
    assert b["image"].shape == (16, 8, 8, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (16,) and b["label"].dtype == np.int32
    assert b["index"].dtype == np.int64
    np.testing.assert_array_equal(b["label"], synth.y_train[b["index"]])


def test_order_depends_on_seed_and_epoch_only(synth):
  indices = np.arange(0, N, 2)
  order = lambda **kw: _cat(_epoch(synth, indices, global_batch=8,  # noqa
                                   augment=False, **kw), "index")
  a = order(seed=0, epoch=0)
  np.testing.assert_array_equal(a, order(seed=0, epoch=0))
  assert not np.array_equal(a, order(seed=0, epoch=1))
  assert not np.array_equal(a, order(seed=1, epoch=0))
  # Shuffled, not in selector order.
  assert not np.array_equal(a, indices[:len(a)])


def test_unaugmented_images_are_the_normalised_source_rows(synth):
  batches = _epoch(synth, np.arange(N), global_batch=32, seed=3, epoch=2,
                   augment=False)
  for b in batches:
    np.testing.assert_allclose(b["image"],
                               _normalised(synth, synth.x_train[b["index"]]),
                               rtol=1e-5, atol=1e-5)


def _crop_candidates(img, padding, mode, flips):
  """Every crop (and flip) the augmentation may produce from one image."""
  h, w = img.shape[:2]
  pad_mode = "reflect" if mode == "reflect" else "constant"
  padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)),
                  mode=pad_mode)
  out = []
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      out.append(crop)
      if flips:
        out.append(crop[:, ::-1])
  return np.stack(out)


def _match(ds, image, source, flips):
  """Index of the candidate crop equal to `image` (-1 if none)."""
  cands = _normalised(ds, _crop_candidates(source, ds.crop_padding,
                                           ds.pad_mode, flips))
  err = np.abs(cands - image[None]).reshape(len(cands), -1).max(1)
  best = int(np.argmin(err))
  return best if err[best] < 1e-4 else -1


def test_augmented_crops_and_flips_deterministic(synth):
  kwargs = dict(global_batch=16, seed=5, epoch=0)
  indices = np.arange(N)
  first = _epoch(synth, indices, **kwargs)
  second = _epoch(synth, indices, **kwargs)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])
  chosen = []
  for b in first[:4]:
    assert b["image"].shape == (16, 8, 8, 3) and b["image"].dtype == np.float32
    for img, idx in zip(b["image"], b["index"]):
      k = _match(synth, img, synth.x_train[idx], flips=True)
      assert k >= 0, "augmented image is not a padded crop (+flip) of its row"
      chosen.append(k)
  # Crops and flips actually vary (64 samples, 50 candidates).
  assert len(set(chosen)) > 15
  assert any(k % 2 for k in chosen) and any(k % 2 == 0 for k in chosen)
  # A new epoch gives new augmentations of the same samples.
  later = {int(i): img for b in _epoch(synth, indices, global_batch=16, seed=5,
                                       epoch=1) for i, img in zip(b["index"],
                                                                  b["image"])}
  now = {int(i): img for b in first for i, img in zip(b["index"], b["image"])}
  common = sorted(set(now) & set(later))
  differ = sum(not np.array_equal(now[i], later[i]) for i in common)
  assert differ > 0.8 * len(common)


def test_augmentation_is_per_sample_not_per_batch_position(synth):
  """Sample 5 gets the same crop whichever coreset (and batch) holds it."""
  def image_of(indices, sample):
    for b in _epoch(synth, indices, global_batch=4, seed=2, epoch=3):
      hit = np.nonzero(b["index"] == sample)[0]
      if len(hit):
        return b["image"][hit[0]]
    raise AssertionError("sample not yielded")
  np.testing.assert_array_equal(image_of(np.array([5, 9, 11, 40]), 5),
                                image_of(np.array([77, 5, 3, 19, 1, 2, 6, 8]),
                                         5))


def test_crop_mode_zero_padding_without_flip():
  digits = data.load_dataset({"source": "digits"})
  batch = next(data.make_train_iterator(digits, np.arange(200), global_batch=64,
                                        seed=0, epoch=0))
  chosen = []
  for img, idx in zip(batch["image"], batch["index"]):
    k = _match(digits, img, digits.x_train[idx], flips=False)
    assert k >= 0
    chosen.append(k)
  assert len(set(chosen)) > 4  # 9 possible offsets


def test_crop_flip_matches_numpy_reference_directly():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 6, 7, 2), dtype=np.uint8)
  keys = aug.sample_keys(np.arange(50), seed=0, epoch=0)
  for mode in ("reflect", "constant"):
    out = aug.crop_flip(images, keys, padding=3, pad_mode=mode,
                        flip=True).numpy()
    for img, src, key in zip(out, images, keys):
      span = 7
      dy, dx = key[0] % span, key[1] % span
      flip = (key[0] // span) % 2 == 1
      padded = np.pad(src, ((3, 3), (3, 3), (0, 0)),
                      mode="reflect" if mode == "reflect" else "constant")
      want = padded[dy:dy + 6, dx:dx + 7]
      np.testing.assert_array_equal(img, want[:, ::-1] if flip else want)


def test_multi_process_slices_concatenate_to_global_batch(synth):
  indices = np.random.default_rng(1).permutation(N)[:120]
  kwargs = dict(global_batch=16, seed=4, epoch=1)
  full = _epoch(synth, indices, **kwargs)
  for count in (2, 4):
    parts = [_epoch(synth, indices, process_index=p, process_count=count,
                    **kwargs) for p in range(count)]
    assert all(len(p) == len(full) for p in parts)
    for step, whole in enumerate(full):
      for key in ("image", "label", "index"):
        joined = np.concatenate([p[step][key] for p in parts])
        np.testing.assert_array_equal(joined, whole[key])
    assert parts[0][0]["image"].shape == (16 // count, 8, 8, 3)


def test_train_iterator_bad_arguments(synth):
  with pytest.raises(ValueError, match=r"global_batch=32 is larger than the "
                     r"coreset \(len\(indices\)=20\): batch larger than the "
                     r"coreset"):
    data.make_train_iterator(synth, np.arange(20), global_batch=32, seed=0,
                             epoch=0)
  with pytest.raises(ValueError, match=r"indices must be in \[0, 203\)"):
    data.make_train_iterator(synth, np.array([0, 1, 203, 4]), global_batch=2,
                             seed=0, epoch=0)
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    data.make_train_iterator(synth, np.arange(50), global_batch=16, seed=0,
                             epoch=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    data.make_train_iterator(synth, np.arange(50), global_batch=16, seed=0,
                             epoch=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="1-D integer array"):
    data.make_train_iterator(synth, np.zeros((4, 4)), global_batch=2, seed=0,
                             epoch=0)


def test_steps_helpers():
  assert data.steps_per_epoch(150, 16) == 9
  assert data.steps_per_epoch(16, 16) == 1
  assert data.eval_steps(203, 16) == 13
  assert data.eval_steps(16, 16) == 1
  with pytest.raises(ValueError):
    data.steps_per_epoch(10, 0)


# ---------------------------------------------------------------------------
# Evaluation iterator.


@pytest.mark.parametrize("split", ["train", "test"])
def test_eval_every_sample_once_with_masks(synth, split):
  n = synth.num_examples(split)
  x, y = synth.arrays(split)
  it = data.make_eval_iterator(synth, split, batch_size=16)
  batches = list(it)
  assert len(batches) == len(it) == data.eval_steps(n, 16)
  for b in batches:
    assert b["image"].shape == (16, 8, 8, 3) and b["mask"].dtype == bool
    assert b["label"].dtype == np.int32 and b["index"].dtype == np.int64
  mask = _cat(batches, "mask")
  index = _cat(batches, "index")
  np.testing.assert_array_equal(index[mask], np.arange(n))
  assert mask.sum() == n and not mask[n:].any()
  assert (index[~mask] == -1).all()
  images = _cat(batches, "image")
  np.testing.assert_allclose(images[mask], _normalised(synth, x), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(_cat(batches, "label")[mask], y)
  assert (images[~mask] == 0).all()


def _two_process_eval(ds, split, batch_size):
  """Each of two processes' eval batches of `split`; both run as many."""
  parts = [list(data.make_eval_iterator(ds, split, batch_size=batch_size,
                                        process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == data.eval_steps(
      ds.num_examples(split), batch_size)
  return parts


def test_eval_two_processes_jointly_cover_every_sample_once(synth):
  parts = _two_process_eval(synth, "train", 24)
  seen = []
  for p in parts:
    for b in p:
      assert b["image"].shape == (12, 8, 8, 3)
      seen.extend(b["index"][b["mask"]].tolist())
  assert sorted(seen) == list(range(N))
  # Row layout: process p holds rows [12p, 12p+12) of each global batch.
  whole = list(data.make_eval_iterator(synth, "train", batch_size=24))
  for step, b in enumerate(whole):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step]["index"], parts[1][step]["index"]]),
        b["index"])


def test_eval_bad_batch(synth):
  with pytest.raises(ValueError, match="batch_size=5 must be a positive "
                     "multiple of process_count=2"):
    data.make_eval_iterator(synth, "test", batch_size=5, process_count=2)
  with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
    data.make_eval_iterator(synth, "validation", batch_size=4)


def test_label_noise_flows_through(synth):
  # Iterate the clean dataset first, so its labels are cached as tensors: the
  # noisy copy must not reuse them.
  next(data.make_train_iterator(synth, np.arange(N), global_batch=8, seed=0,
                                epoch=0))
  noisy = data.with_label_noise(synth, 0.4, seed=0)
  labels = {}
  for b in data.make_train_iterator(noisy, np.arange(N), global_batch=8,
                                    seed=0, epoch=0):
    labels.update(zip(b["index"].tolist(), b["label"].tolist()))
  idx = np.array(sorted(labels))
  np.testing.assert_array_equal([labels[i] for i in idx], noisy.y_train[idx])
  assert (noisy.y_train != synth.y_train).sum() == round(0.4 * N)


# ---------------------------------------------------------------------------
# Random-access (ImageNet-style) datasets.


def _png(color, shape):
  buf = io.BytesIO()
  Image.fromarray(np.full(shape, color, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(color, shape):
  buf = io.BytesIO()
  Image.fromarray(np.full(shape, color, np.uint8)).save(buf, format="JPEG",
                                                        quality=95)
  return buf.getvalue()


class _ListSource:
  """A random-access source (like ArrayRecordDataSource) over a list."""

  def __init__(self, records):
    self.records = records
    self.reads = []

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    self.reads.append(i)
    return self.records[i]

  def __getitems__(self, idx):
    return [self[i] for i in idx]


def _colour(i):
  """A distinct flat RGB colour per sample, away from 0/255 for JPEG."""
  return np.array([20 + (i * 37) % 200, 20 + (i * 71) % 200,
                   20 + (i * 113) % 200], np.uint8)


@pytest.fixture(scope="module")
def random_access():
  def records(n, offset):
    out = []
    for i in range(n):
      shape = (30 + (i % 5) * 7, 40 - (i % 3) * 6, 3)
      enc = _jpeg if i % 2 else _png  # both encodings are supported
      out.append({"image": enc(_colour(i + offset), shape),
                  "label": (i + offset) % 4})
    return out
  return data.Dataset(
      name="fake_imagenet", num_classes=4, image_shape=(12, 12, 3),
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_train=45, num_test=11,
      class_names=("a", "b", "c", "d"), augment="imagenet",
      train_source=_ListSource(records(45, 0)),
      test_source=_ListSource(records(11, 100)))


def _pixels(ds, image):
  """Undo normalisation: [0, 255] pixels of one image."""
  return (image * np.asarray(ds.std) + np.asarray(ds.mean)) * 255


def test_random_access_train_reads_only_selection(random_access):
  ds = random_access
  ds.train_source.reads.clear()
  indices = np.array([3, 7, 8, 20, 21, 30, 44, 2, 11])
  batches = _epoch(ds, indices, global_batch=4, seed=0, epoch=0)
  assert len(batches) == 2
  seen = _cat(batches, "index")
  assert set(seen.tolist()) <= set(indices.tolist()) and len(set(seen)) == 8
  assert set(ds.train_source.reads) <= set(indices.tolist())
  for b in batches:
    assert b["image"].shape == (4, 12, 12, 3) and b["image"].dtype == np.float32
    np.testing.assert_array_equal(b["label"], b["index"] % 4)
    for img, idx in zip(b["image"], b["index"]):
      # Flat-colour sources: any crop/resize/flip keeps the colour.
      np.testing.assert_allclose(_pixels(ds, img), np.broadcast_to(
          _colour(int(idx)), img.shape), atol=4)
  again = _epoch(ds, indices, global_batch=4, seed=0, epoch=0)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_random_resized_crop_is_deterministic_and_varies():
  rng = np.random.default_rng(0)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
      buf, format="JPEG")
  encoded = buf.getvalue()
  keys = aug.sample_keys(np.arange(6), seed=1, epoch=0)
  crops = [aug.decode_random_resized_crop(encoded, k, size=(10, 10),
                                          channels=3).numpy() for k in keys]
  again = aug.decode_random_resized_crop(encoded, keys[0], size=(10, 10),
                                         channels=3).numpy()
  np.testing.assert_array_equal(crops[0], again)
  assert crops[0].shape == (10, 10, 3) and crops[0].dtype == np.float32
  assert len({c.tobytes() for c in crops}) == 6


def test_random_access_multi_process_and_noise(random_access):
  ds = data.with_label_noise(random_access, 0.5, seed=3)
  kwargs = dict(global_batch=6, seed=1, epoch=2)
  full = _epoch(ds, np.arange(45), **kwargs)
  parts = [_epoch(ds, np.arange(45), process_index=p, process_count=3,
                  **kwargs) for p in range(3)]
  assert all(len(p) == len(full) == 7 for p in parts)
  for step, whole in enumerate(full):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(
          np.concatenate([p[step][key] for p in parts]), whole[key])
    true = whole["index"] % 4
    want = (true + ds.label_offsets[whole["index"]]) % 4
    np.testing.assert_array_equal(whole["label"], want)
  assert (ds.label_offsets != 0).sum() == round(0.5 * 45)


def test_random_access_eval_centre_crop_every_sample_once(random_access):
  ds = random_access
  for split, n in (("test", 11), ("train", 45)):
    parts = _two_process_eval(ds, split, 8)
    assert ds.num_examples(split) == n
    seen = []
    for p in parts:
      for b in p:
        assert b["image"].shape == (4, 12, 12, 3)
        m = b["mask"]
        seen.extend(b["index"][m].tolist())
        offset = 100 if split == "test" else 0
        np.testing.assert_array_equal(b["label"][m],
                                      (b["index"][m] + offset) % 4)
        assert (b["index"][~m] == -1).all() and (b["image"][~m] == 0).all()
        for img, idx in zip(b["image"][m], b["index"][m]):
          np.testing.assert_allclose(_pixels(ds, img), np.broadcast_to(
              _colour(int(idx) + offset), img.shape), atol=4)
    assert sorted(seen) == list(range(n))


def test_centre_crop_geometry():
  # Left half black, right half white, 40x80: the centre 24x24 crop of the
  # image resized to 27x54 (shorter side 24/0.875) straddles the edge.
  img = np.zeros((40, 80, 3), np.uint8)
  img[:, 40:] = 255
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  out = aug.decode_center_crop(buf.getvalue(), size=(24, 24),
                               channels=3).numpy()
  assert out.shape == (24, 24, 3)
  assert out[:, :10].max() < 1 and out[:, 14:].min() > 254


# ---------------------------------------------------------------------------
# Dataset.train_labels: the one way to read the training labels.


class _BatchCountingSource(_ListSource):
  """A _ListSource that also records each __getitems__ call."""

  def __init__(self, records):
    super().__init__(records)
    self.batches = []

  def __getitems__(self, idx):
    self.batches.append(list(idx))
    return super().__getitems__(idx)


class _ItemOnlySource(_ListSource):
  """A source without __getitems__ (plain `len` and `[i]`)."""
  __getitems__ = None


def test_train_labels_in_memory_is_y_train(synth):
  labels = synth.train_labels()
  assert labels.dtype == np.int32 and labels.shape == (N,)
  np.testing.assert_array_equal(labels, synth.y_train)
  noisy = data.with_label_noise(synth, 0.3, seed=2)
  np.testing.assert_array_equal(noisy.train_labels(), noisy.y_train)
  assert (noisy.train_labels() != synth.y_train).sum() == round(0.3 * N)


def test_train_labels_random_access_read_once_in_batches(random_access,
                                                         monkeypatch):
  from acs_jax.data import labels as labels_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(labels_lib, "_LABEL_READ_BATCH", 16)
  source = _BatchCountingSource(random_access.train_source.records)
  ds = dataclasses.replace(random_access, train_source=source)
  true = np.array([r["label"] for r in source.records])
  labels = ds.train_labels()
  assert labels.dtype == np.int32 and labels.shape == (45,)
  np.testing.assert_array_equal(labels, true)
  assert [len(b) for b in source.batches] == [16, 16, 13]
  assert sorted(source.reads) == list(range(45))
  # Cached per Dataset object: the second call reads nothing.
  assert ds.train_labels() is labels and len(source.reads) == 45
  with pytest.raises(ValueError, match="read-only"):
    labels[0] = 1
  # A source without __getitems__ is read record by record.
  plain = _ItemOnlySource(source.records)
  np.testing.assert_array_equal(
      dataclasses.replace(random_access, train_source=plain).train_labels(),
      true)
  assert sorted(plain.reads) == list(range(45))


def test_train_labels_random_access_noise_matches_pipeline(random_access):
  source = _ListSource(random_access.train_source.records)
  ds = data.with_label_noise(
      dataclasses.replace(random_access, train_source=source), 0.4, seed=5)
  true = np.array([r["label"] for r in source.records])
  labels = ds.train_labels()
  np.testing.assert_array_equal(labels, (true + ds.label_offsets) % 4)
  assert (labels != true).sum() == round(0.4 * 45)
  assert len(source.reads) == 45
  # The labels the input pipeline yields for the same samples (training and
  # scoring iterators) agree with train_labels().
  seen = {}
  for b in data.make_train_iterator(ds, np.arange(45), global_batch=9,
                                    seed=0, epoch=0, augment=False):
    seen.update(zip(b["index"].tolist(), b["label"].tolist()))
  assert sorted(seen) == list(range(45))
  for b in data.make_eval_iterator(ds, "train", batch_size=8):
    m = b["mask"]
    np.testing.assert_array_equal(b["label"][m], labels[b["index"][m]])
  np.testing.assert_array_equal([seen[i] for i in range(45)], labels)


def test_train_labels_bad_source(random_access):
  short = _ListSource(random_access.train_source.records[:40])
  with pytest.raises(ValueError, match="has 40 records, the dataset says 45"):
    dataclasses.replace(random_access, train_source=short).train_labels()
  bad = _ListSource([{**r, "label": 7}
                     for r in random_access.train_source.records])
  with pytest.raises(ValueError, match=r"must be in \[0, 4\), got \[7, 7\]"):
    dataclasses.replace(random_access, train_source=bad).train_labels()


def test_pipelines_run_without_the_autotune_thread(synth, random_access):
  """Dropping an iterator joins tf.data's autotune thread, which stalled
  real runs idle for 10-40 s at epoch starts (input_pipeline._options)."""
  from acs_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  idx = np.arange(40)
  for ds in (synth, random_access):
    train, _ = input_pipeline.make_train_dataset(ds, idx, global_batch=8,
                                                 seed=0, epoch=0)
    evaluation, _ = input_pipeline.make_eval_dataset(ds, "test", batch_size=8)
    for pipeline in (train, evaluation):
      options = pipeline.options()
      assert options.autotune.enabled is False
      assert options.deterministic is True
