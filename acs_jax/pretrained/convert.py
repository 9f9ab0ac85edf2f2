r"""PyTorch checkpoints -> acs_jax teacher directories.

    python -m acs_jax.pretrained.convert --checkpoint=resnet20-12fca82f.th \
        --out=teachers/resnet20_cifar10

writes a directory that `--config.teacher.checkpoint=DIR` loads unchanged: the
FP model's variables (orbax) and teacher.json, which records the model
(name, block, stem, shortcut, width), the class count, the input size and the
input normalisation the weights were trained with. A run that loads it uses
that normalisation for teacher and student alike.

Layouts (the module structure the state_dict keys follow), detected from the
keys unless --layout is given:
  torchvision_resnet    torchvision's resnet18 / resnet34 (ImageNet stem;
                        `conv1`, `layerI.J.downsample.K`, `fc`).
  cifar_resnet          He et al.'s CIFAR ResNet-20/32/44/56 (akamaster's
                        pytorch_resnet_cifar10: `layer1..3`, option-A
                        shortcuts without parameters, `linear`).
  official_resnet       the official QAT-ACS code's FP CIFAR ResNet-18/34
                        (deepcore/nets/resnet.py: `layerI.J.shortcut.K`,
                        `linear`).
  official_mobilenetv2  the official code's CIFAR MobileNetV2
                        (deepcore/nets/mobilenetv2.py: `features.K.conv.L`,
                        `classifier.1`).
The checkpoint is read without torch (acs_jax.pretrained.torch_file): both
serialisations, a bare state_dict or one wrapped in {'state_dict': ...},
with or without DataParallel's `module.` prefix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from acs_jax import models
from acs_jax.data import datasets
from acs_jax.models import mobilenetv2
from acs_jax.quant import QuantConfig

LAYOUTS = ("torchvision_resnet", "cifar_resnet", "official_resnet",
           "official_mobilenetv2")
NORMALIZATIONS = datasets.NORMALIZATIONS
# What each layout was trained with, when that is known for certain.
_DEFAULT_NORMALIZATION = {"torchvision_resnet": "imagenet",
                          "cifar_resnet": "imagenet"}


class ConvertError(ValueError):
  """The checkpoint cannot become a teacher of the requested model."""


@dataclasses.dataclass(frozen=True)
class Target:
  """The acs_jax model a checkpoint converts to (and teacher.json's fields)."""
  layout: str
  model: str
  num_classes: int
  image_size: int
  stem: str = "cifar"
  shortcut: str = "projection"
  width_mult: float = 1.0

  def build(self):
    return models.build_model(
        self.model, num_classes=self.num_classes, quant=QuantConfig(),
        block="basic", stem=self.stem, shortcut=self.shortcut,
        image_size=self.image_size, width_mult=self.width_mult)

  def meta(self) -> dict[str, Any]:
    return {"model": self.model, "block": "basic", "stem": self.stem,
            "shortcut": self.shortcut, "width_mult": self.width_mult,
            "num_classes": self.num_classes,
            "image_shape": [self.image_size, self.image_size, 3]}


# ---------------------------------------------------------------------------
# Layout detection.


def _blocks_per_layer(keys, prefix: str = "layer") -> tuple[int, ...]:
  found: dict[int, set[int]] = {}
  for k in keys:
    m = re.match(rf"{prefix}(\d+)\.(\d+)\.", k)
    if m:
      found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  return tuple(len(found[i]) for i in sorted(found))


def detect_layout(state_dict: dict[str, np.ndarray]) -> str:
  keys = set(state_dict)
  if "features.0.0.weight" in keys and "classifier.1.weight" in keys:
    return "official_mobilenetv2"
  if "fc.weight" in keys and "conv1.weight" in keys:
    return "torchvision_resnet"
  if "linear.weight" in keys and "conv1.weight" in keys:
    if any(".shortcut." in k for k in keys) or len(
        _blocks_per_layer(keys)) == 4:
      return "official_resnet"
    return "cifar_resnet"
  sample = ", ".join(sorted(keys)[:4])
  raise ConvertError(
      f"the checkpoint's keys ({sample}, ...) match none of the known "
      f"layouts ({', '.join(LAYOUTS)}); pass --layout and --model")


_RESNET_BY_BLOCKS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
_CIFAR_BY_BLOCKS = {(n, n, n): name
                    for name, n in models.CIFAR_RESNET_DEPTHS.items()}


def infer_target(state_dict: dict[str, np.ndarray], layout: str | None = None,
                 model: str | None = None, image_size: int | None = None,
                 num_classes: int | None = None) -> Target:
  """The model a state_dict of `layout` holds (inferred where not given)."""
  layout = layout or detect_layout(state_dict)
  if layout not in LAYOUTS:
    raise ConvertError(f"--layout={layout!r} is unknown; valid: "
                       f"{', '.join(LAYOUTS)}")
  head = {"torchvision_resnet": "fc.weight",
          "official_mobilenetv2": "classifier.1.weight"}.get(
              layout, "linear.weight")
  if head not in state_dict:
    raise ConvertError(f"the checkpoint has no {head!r}, which a "
                       f"{layout} state_dict has; is --layout right?")
  ckpt_classes = int(state_dict[head].shape[0])
  if num_classes is not None and num_classes != ckpt_classes:
    raise ConvertError(
        f"--num_classes={num_classes} but the checkpoint's classifier "
        f"({head}) has {ckpt_classes} outputs; a teacher must predict the "
        "dataset's classes (fine-tuning a new classifier is not supported)")
  kw: dict[str, Any] = {"layout": layout, "num_classes": ckpt_classes}
  blocks = _blocks_per_layer(state_dict)
  if layout == "official_mobilenetv2":
    inferred = "mobilenetv2"
    stem_out = int(state_dict["features.0.0.weight"].shape[0])
    widths = {mobilenetv2.make_divisible(32 * w): w
              for w in (0.5, 0.75, 1.0, 1.4)}
    if stem_out not in widths:
      raise ConvertError(f"MobileNetV2 stem with {stem_out} channels matches "
                         "no width multiplier of 0.5, 0.75, 1.0, 1.4")
    kw["width_mult"] = widths[stem_out]
  elif layout == "cifar_resnet":
    inferred = _CIFAR_BY_BLOCKS.get(blocks)
    kw["shortcut"] = "zero_pad"
  else:
    inferred = _RESNET_BY_BLOCKS.get(blocks)
    if layout == "torchvision_resnet":
      kw["stem"] = "imagenet"
  model = model or inferred
  if model is None:
    raise ConvertError(f"the checkpoint's {blocks} blocks per stage match no "
                       f"{layout} model; pass --model")
  kw["model"] = model
  kw["image_size"] = image_size or (224 if layout == "torchvision_resnet"
                                    else 32)
  return Target(**kw)


# ---------------------------------------------------------------------------
# Key mapping: acs_jax module path -> torch module name.


def _resnet_module(path: tuple[str, ...], layout: str) -> str:
  top = path[0]
  if top == "stem_conv":
    return "conv1"
  if top == "stem_bn":
    return "bn1"
  if top == "head":
    return "fc" if layout == "torchvision_resnet" else "linear"
  m = re.fullmatch(r"stage(\d+)_block(\d+)", top)
  if not m:
    raise KeyError(top)
  block = f"layer{m.group(1)}.{int(m.group(2)) - 1}"
  inner = path[1:]
  if inner[0] == "Shortcut_0":
    short = "downsample" if layout == "torchvision_resnet" else "shortcut"
    return f"{block}.{short}." + {"QConv_0": "0", "BatchNorm_0": "1"}[inner[1]]
  return f"{block}." + {"QConv_0": "conv1", "BatchNorm_0": "bn1",
                        "QConv_1": "conv2", "BatchNorm_1": "bn2"}[inner[0]]


def _mobilenet_module(path: tuple[str, ...]) -> str:
  top = path[0]
  fixed = {"stem_conv": "features.0.0", "stem_bn": "features.0.1",
           "last_conv": f"features.{_mobilenet_blocks() + 1}.0",
           "last_bn": f"features.{_mobilenet_blocks() + 1}.1",
           "head": "classifier.1"}
  if top in fixed:
    return fixed[top]
  m = re.fullmatch(r"stage(\d+)_block(\d+)", top)
  if not m:
    raise KeyError(top)
  stage, j = int(m.group(1)), int(m.group(2))
  index = sum(n for _, _, n, _ in mobilenetv2.CIFAR_CFG[:stage - 1]) + j
  # torch's Sequential: conv, BN, ReLU6 per layer (the last has no ReLU6).
  layer = {"QConv_0": 0, "BatchNorm_0": 1, "QConv_1": 3, "BatchNorm_1": 4,
           "QConv_2": 6, "BatchNorm_2": 7}[path[1]]
  return f"features.{index}.conv.{layer}"


def _mobilenet_blocks() -> int:
  return sum(n for _, _, n, _ in mobilenetv2.CIFAR_CFG)


# acs_jax leaf -> (torch parameter name, transform of the torch array).
_LEAVES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "scale": ("weight", lambda a: a),
    "bias": ("bias", lambda a: a),
    "mean": ("running_mean", lambda a: a),
    "var": ("running_var", lambda a: a),
}


def _leaf(module: str, leaf: str, is_dense: bool):
  if leaf == "kernel":
    if is_dense:  # torch Linear: (out, in) -> (in, out)
      return f"{module}.weight", lambda a: a.T
    # torch conv OIHW -> flax HWIO (depthwise: (C, 1, kh, kw) -> (kh, kw, 1, C))
    return f"{module}.weight", lambda a: a.transpose(2, 3, 1, 0)
  name, fn = _LEAVES[leaf]
  return f"{module}.{name}", fn


def convert_state_dict(state_dict: dict[str, np.ndarray], target: Target
                       ) -> dict[str, Any]:
  """Maps a torch state_dict onto the target model's variables.

  Returns:
    {"params", "batch_stats"} as float32 numpy arrays.

  Raises:
    ConvertError: keys missing, left over, or of the wrong shape (the first
      few of each are named, with the expected model).
  """
  model = target.build()
  size = target.image_size
  like = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(like))
  out, used, missing, misshaped = {}, set(), [], []
  for path, spec in flat.items():
    collection, *modpath, leaf = path
    if target.layout == "official_mobilenetv2":
      module = _mobilenet_module(tuple(modpath))
    else:
      module = _resnet_module(tuple(modpath), target.layout)
    is_dense = modpath[0] == "head"
    key, fn = _leaf(module, leaf, is_dense)
    if key not in state_dict:
      missing.append(key)
      continue
    value = fn(np.asarray(state_dict[key], np.float32))
    used.add(key)
    if value.shape != tuple(spec.shape):
      misshaped.append(f"{key} {tuple(state_dict[key].shape)} (expected "
                       f"{_torch_shape(spec.shape, leaf, is_dense)})")
      continue
    out[path] = np.ascontiguousarray(value)
  unexpected = sorted(k for k in state_dict if k not in used
                      and not k.endswith("num_batches_tracked"))
  problems = []
  for what, items in (("missing", missing), ("unexpected", unexpected),
                      ("of the wrong shape", misshaped)):
    if items:
      shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more"
                                      if len(items) > 4 else "")
      problems.append(f"{len(items)} keys {what}: {shown}")
  if problems:
    raise ConvertError(
        f"the state_dict does not match {target.model} ({target.layout} "
        f"layout, {target.num_classes} classes, shortcut "
        f"{target.shortcut!r}): " + "; ".join(problems))
  return flax.traverse_util.unflatten_dict(out)


def _torch_shape(shape, leaf: str, is_dense: bool) -> tuple[int, ...]:
  if leaf != "kernel":
    return tuple(shape)
  if is_dense:
    return tuple(shape[::-1])
  h, w, i, o = shape
  return (o, i, h, w)


# ---------------------------------------------------------------------------
# Writing the teacher directory.


def normalization_from_name(name: str) -> tuple[tuple[float, ...],
                                                tuple[float, ...]]:
  if name not in NORMALIZATIONS:
    raise ConvertError(f"--normalization={name!r} is unknown; valid: "
                       f"{', '.join(NORMALIZATIONS)}")
  return NORMALIZATIONS[name]


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def import_checkpoint(path: str, out: str, *, layout: str | None = None,
                      model: str | None = None, image_size: int | None = None,
                      num_classes: int | None = None,
                      normalization: str | None = None) -> dict[str, Any]:
  """Converts the PyTorch checkpoint `path` into the teacher directory `out`.

  Everything is checked before anything is written; the directory appears
  complete or not at all (written beside it, then renamed).

  Returns:
    The teacher.json contents.
  """
  # pylint: disable-next=g-import-not-at-top
  from acs_jax import checkpoint as ckpt_lib
  from acs_jax.pretrained import torch_file  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise ConvertError(f"--out={out!r} already exists; refusing to overwrite "
                       "it (choose a new directory)")
  parent = os.path.dirname(out)
  if not os.path.isdir(parent):
    raise ConvertError(f"--out={out!r}: its parent folder does not exist")
  state_dict, extras = torch_file.read_checkpoint(path)
  target = infer_target(state_dict, layout, model, image_size, num_classes)
  normalization = normalization or _DEFAULT_NORMALIZATION.get(target.layout)
  if normalization is None:
    raise ConvertError(
        f"the input normalisation of a {target.layout} checkpoint is not "
        "recorded in it: pass --normalization (one of "
        f"{', '.join(NORMALIZATIONS)}) as it was trained")
  mean, std = normalization_from_name(normalization)
  variables = convert_state_dict(state_dict, target)
  meta = {**target.meta(), "mean": list(mean), "std": list(std),
          "normalization": normalization, "layout": target.layout,
          "source": os.path.basename(path), "source_sha256": _sha256(path),
          "source_extras": extras}
  tmp = f"{out}.partial-{os.getpid()}"
  try:
    ckpt_lib.save_teacher(tmp, variables, meta)
    os.rename(tmp, out)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return meta


def main(argv) -> None:
  # pylint: disable=g-import-not-at-top
  import sys
  from absl import flags
  from acs_jax import env
  # pylint: enable=g-import-not-at-top
  del argv
  env.quiet_library_logs()  # orbax logs each file of the teacher it writes
  f = flags.FLAGS
  try:
    meta = import_checkpoint(
        f.checkpoint, f.out, layout=f.layout, model=f.model,
        image_size=f.image_size, num_classes=f.num_classes,
        normalization=f.normalization)
  except ValueError as e:  # ConvertError, TorchFileError, CheckpointError
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote teacher {meta['model']} ({meta['layout']}, "
        f"{meta['num_classes']} classes, shortcut {meta['shortcut']}, "
        f"normalisation {meta['normalization']}) to {os.path.abspath(f.out)}")
  print(f"use it with --config.model.name={meta['model']} "
        f"--config.model.shortcut={meta['shortcut']} "
        f"--config.teacher.checkpoint={os.path.abspath(f.out)}")


def _define_flags() -> None:
  # pylint: disable-next=g-import-not-at-top
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint file.",
                      required=True)
  flags.DEFINE_string("out", None, "Teacher directory to create.",
                      required=True)
  flags.DEFINE_enum("layout", None, LAYOUTS, "Key layout (default: detect).")
  flags.DEFINE_enum("model", None, models.MODELS,
                    "acs_jax model (default: inferred from the keys).")
  flags.DEFINE_integer("image_size", None,
                       "Input side (default 224 torchvision, else 32).")
  flags.DEFINE_integer("num_classes", None,
                       "Expected classes (checked against the checkpoint).")
  flags.DEFINE_enum("normalization", None, list(NORMALIZATIONS),
                    "Input normalisation the weights were trained with "
                    "(default: imagenet for torchvision_resnet and "
                    "cifar_resnet; required otherwise).")


if __name__ == "__main__":
  # pylint: disable-next=g-import-not-at-top
  from absl import app
  _define_flags()
  app.run(main)
