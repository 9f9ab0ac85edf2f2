"""Deterministic, host-side (tf.data) augmentation.

All randomness is derived from per-sample keys computed by `sample_keys` from
(seed, epoch, sample index). Every op below is a pure function of its image and
its key, so results do not depend on tf.data parallelism, on the order of the
batch, or on which coreset the sample happens to be in: a sample gets the same
crop in a given epoch whichever selector picked it.

Two families:
  * in-memory, fixed-size batches (`crop_flip`): "cifar" (random crop from a
    reflect-padded image + horizontal flip) and "crop" (crop without flip). The
    whole batch is done with two gathers, no per-image loop.
  * random-access, variable-size encoded images (`decode_random_resized_crop`,
    `decode_center_crop`): the ImageNet recipe, one image at a time.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from acs_jax import env

tf = env.lazy_tensorflow()

# Golden-ratio increment and finaliser constants of SplitMix64 (Steele et al.,
# "Fast splittable pseudorandom number generators", 2014).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

# The usual ImageNet evaluation: resize so that the crop covers 87.5% of the
# shorter side (224 / 256).
EVAL_CROP_FRACTION = 0.875


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser, elementwise on a uint64 array (wraps mod 2**64)."""
  x = np.asarray(x, dtype=np.uint64) + _GAMMA
  x = (x ^ (x >> np.uint64(30))) * _MIX1
  x = (x ^ (x >> np.uint64(27))) * _MIX2
  return x ^ (x >> np.uint64(31))


def sample_keys(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
  """Per-sample random keys from (seed, epoch, sample index).

  Args:
    indices: int [n], dataset sample indices (not positions in a batch).
    seed: non-negative run seed.
    epoch: non-negative epoch number.

  Returns:
    int64 [n, 2], non-negative; usable as seeds of tf.random stateless ops.
  """
  with np.errstate(over="ignore"):
    base = _splitmix64(_splitmix64(np.array([seed], np.uint64))
                       ^ np.array([epoch], np.uint64))
    idx = np.asarray(indices).astype(np.int64).astype(np.uint64)
    k0 = _splitmix64(base ^ _splitmix64(idx))
    k1 = _splitmix64(k0)
  # Drop the top bit so the keys stay non-negative as int64.
  keys = np.stack([k0 >> np.uint64(1), k1 >> np.uint64(1)], axis=-1)
  return keys.astype(np.int64)


def _crop_indices(offset: tf.Tensor, size: int, padding: int,
                  reflect: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """Source positions of a crop taken from a virtually padded axis.

  Args:
    offset: int64 [B], crop start in padded coordinates, in [0, 2*padding].
    size: length of the (unpadded) axis; also the crop length.
    padding: pixels of padding on each side.
    reflect: mirror the image into the padding (else the padding is zeros).

  Returns:
    (positions int64 [B, size] inside [0, size), valid bool [B, size]); valid
    is False where a constant-padded crop reads padding.
  """
  pos = offset[:, None] - padding + tf.range(size, dtype=tf.int64)[None, :]
  if reflect:
    # Mirror without repeating the edge pixel (numpy/TF "reflect" mode).
    pos = tf.abs(pos)
    pos = tf.where(pos > size - 1, 2 * (size - 1) - pos, pos)
    return pos, tf.ones_like(pos, dtype=tf.bool)
  valid = (pos >= 0) & (pos < size)
  return tf.clip_by_value(pos, 0, size - 1), valid


def crop_flip(images: tf.Tensor, keys: tf.Tensor, *, padding: int,
              pad_mode: str = "reflect", flip: bool = True) -> tf.Tensor:
  """Random crop (from padded images) and optional horizontal flip, batched.

  Equivalent to padding every image by `padding` pixels, cropping an HxW window
  at a random offset and flipping it with probability 1/2, but done as two
  gathers on the unpadded batch (no padded copy).

  Args:
    images: [B, H, W, C] (any dtype; uint8 in this project).
    keys: int64 [B, 2] from `sample_keys`.
    padding: pixels of padding per side (0 disables the crop).
    pad_mode: "reflect" or "constant" (zeros).
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    Same shape and dtype as `images`.
  """
  if pad_mode not in ("reflect", "constant"):
    raise ValueError(f"pad_mode must be 'reflect' or 'constant', got "
                     f"{pad_mode!r}")
  h, w = images.shape[1], images.shape[2]
  if padding >= min(h, w) and pad_mode == "reflect":
    raise ValueError(f"reflect padding {padding} must be smaller than the "
                     f"image ({h}x{w})")
  keys = tf.convert_to_tensor(keys, tf.int64)
  span = 2 * padding + 1
  oy = tf.math.floormod(keys[:, 0], span)
  ox = tf.math.floormod(keys[:, 1], span)
  reflect = pad_mode == "reflect"
  rows, row_ok = _crop_indices(oy, h, padding, reflect)
  cols, col_ok = _crop_indices(ox, w, padding, reflect)
  if flip:
    # Uses key bits not consumed by the offsets (floordiv by span).
    do_flip = tf.math.floormod(tf.math.floordiv(keys[:, 0], span), 2) == 1
    cols = tf.where(do_flip[:, None], tf.reverse(cols, axis=[1]), cols)
    col_ok = tf.where(do_flip[:, None], tf.reverse(col_ok, axis=[1]), col_ok)
  out = tf.gather(images, rows, axis=1, batch_dims=1)   # [B, H, W, C]
  out = tf.gather(out, cols, axis=2, batch_dims=1)      # [B, H, W, C]
  if not reflect and padding:
    ok = row_ok[:, :, None, None] & col_ok[:, None, :, None]
    out = tf.where(ok, out, tf.zeros_like(out))
  return out


def normalize(images: tf.Tensor, mean: Sequence[float],
              std: Sequence[float]) -> tf.Tensor:
  """(x / 255 - mean) / std per channel.

  Args:
    images: [..., C] pixel values in [0, 255] (uint8 or float).
    mean: C floats, in [0, 1] pixel units.
    std: C floats, in [0, 1] pixel units.

  Returns:
    float32, same shape.
  """
  mean = np.asarray(mean, np.float64)
  std = np.asarray(std, np.float64)
  scale = tf.constant(1.0 / (255.0 * std), tf.float32)
  shift = tf.constant(mean / std, tf.float32)
  return tf.cast(images, tf.float32) * scale - shift


def _decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  img = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
  img.set_shape([None, None, channels])
  return img


def _image_shape(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  """[h, w] of an encoded image, reading only the header for JPEGs."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.extract_jpeg_shape(encoded)[:2],
      lambda: tf.shape(_decode(encoded, channels))[:2])


def decode_random_resized_crop(
    encoded: tf.Tensor, key: tf.Tensor, *, size: Sequence[int], channels: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True) -> tf.Tensor:
  """Inception-style random resized crop (+ flip) of one encoded image.

  A box covering `area_range` of the image with aspect ratio in `aspect_range`
  is sampled (10 attempts, else the whole image), decoded (JPEG: only the box
  is decoded) and resized bilinearly to `size`.

  Args:
    encoded: tf.string scalar, a JPEG/PNG/BMP/GIF file.
    key: int64 [2] from `sample_keys`.
    size: (height, width) of the output.
    channels: 1 or 3.
    area_range: fraction of the image area the crop covers.
    aspect_range: width/height ratio range of the crop.
    flip: flip horizontally with probability 1/2.

  Returns:
    float32 [height, width, channels] in [0, 255].
  """
  key = tf.convert_to_tensor(key, tf.int64)
  shape = _image_shape(encoded, channels)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [channels]], 0),
      bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
      seed=key,
      min_object_covered=0.0,
      aspect_ratio_range=aspect_range,
      area_range=area_range,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], box_size[0], box_size[1]])

  def _jpeg():
    return tf.io.decode_and_crop_jpeg(encoded, window, channels=channels)

  def _other():
    img = _decode(encoded, channels)
    return img[begin[0]:begin[0] + box_size[0], begin[1]:begin[1] + box_size[1]]

  crop = tf.cond(tf.io.is_jpeg(encoded), _jpeg, _other)
  crop.set_shape([None, None, channels])
  out = tf.image.resize(crop, size, method="bilinear")
  if flip:
    # A second stream (swapped key words) so the flip is independent of the
    # box.
    coin = tf.random.stateless_uniform([], seed=tf.reverse(key, [0]))
    out = tf.cond(coin < 0.5, lambda: tf.reverse(out, [1]), lambda: out)
  return out


def decode_center_crop(encoded: tf.Tensor, *, size: Sequence[int],
                       channels: int,
                       crop_fraction: float = EVAL_CROP_FRACTION) -> tf.Tensor:
  """Evaluation transform: resize the shorter side, then centre crop.

  For size (224, 224) the shorter side is resized to 256 (= 224 / 0.875).

  Args:
    encoded: tf.string scalar, an encoded image.
    size: (height, width) of the output.
    channels: 1 or 3.
    crop_fraction: crop side / resized shorter side.

  Returns:
    float32 [height, width, channels] in [0, 255].
  """
  img = _decode(encoded, channels)
  h, w = size
  target = int(round(min(h, w) / crop_fraction))
  shape = tf.cast(tf.shape(img)[:2], tf.float32)
  scale = target / tf.reduce_min(shape)
  # Never smaller than the crop, whatever the rounding.
  new_h = tf.maximum(tf.cast(tf.round(shape[0] * scale), tf.int32), h)
  new_w = tf.maximum(tf.cast(tf.round(shape[1] * scale), tf.int32), w)
  img = tf.image.resize(img, tf.stack([new_h, new_w]), method="bilinear")
  top = (new_h - h) // 2
  left = (new_w - w) // 2
  out = img[top:top + h, left:left + w]
  out.set_shape([h, w, channels])
  return out
