"""Model zoo chosen by name, and the teacher -> student weight transfer."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from acs_jax.models.mobilenetv2 import MobileNetV2
from acs_jax.models.resnet import (BLOCKS, CIFAR_RESNET_DEPTHS, SHORTCUTS,
                                   STEMS, ResNet, ResNet18, ResNet20, ResNet34,
                                   ResNetTiny, cifar_resnet)
from acs_jax.quant import QuantConfig
from acs_jax.quant import calibrate

MODELS = ("resnet18", "resnet34", *CIFAR_RESNET_DEPTHS, "mobilenetv2",
          "resnet_tiny")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(name: str, *, num_classes: int, quant: QuantConfig,
                block: str = "basic", stem: str = "auto",
                shortcut: str = "projection", image_size: int = 32, width_mult: float = 1.0,
                dropout: float | None = None, dtype: str = "float32"):
  """Returns the Flax module `name` with the given quantization.

  Args:
    name: one of MODELS.
    num_classes: classifier outputs.
    quant: which layers are quantized; `quant.as_float()` gives the teacher.
    block: ResNet block type, "basic" or "official".
    stem: "cifar", "imagenet", or "auto" (imagenet stem for inputs >= 64px).
    shortcut: ResNet shortcut where the shape changes, "projection" (1x1
      conv + BN) or "zero_pad" (He et al.'s option A, no parameters).
    image_size: input height/width (only used by stem="auto").
    width_mult: MobileNetV2 width multiplier (0.5 in the official CIFAR code).
    dropout: MobileNetV2 dropout before the classifier (default 0.2).
    dtype: compute dtype name, "float32" or "bfloat16".
  """
  if stem == "auto":
    stem = "imagenet" if image_size >= 64 else "cifar"
  for field, value, valid in (("name", name, MODELS), ("dtype", dtype, DTYPES),
                              ("block", block, BLOCKS), ("stem", stem, STEMS),
                              ("shortcut", shortcut, SHORTCUTS)):
    if value not in valid:
      raise ValueError(f"config.model.{field}={value!r} is unknown; valid "
                       f"choices: {', '.join(valid)}")
  kw = dict(num_classes=num_classes, quant=quant, dtype=DTYPES[dtype])
  if name == "mobilenetv2":
    return MobileNetV2(width_mult=width_mult,
                       dropout=0.2 if dropout is None else dropout, **kw)
  kw.update(block=block, shortcut=shortcut)
  if name in CIFAR_RESNET_DEPTHS:
    return cifar_resnet(CIFAR_RESNET_DEPTHS[name], **kw)
  cls = {"resnet18": ResNet18, "resnet34": ResNet34,
         "resnet_tiny": ResNetTiny}[name]
  return cls(stem=stem, **kw)


def model_from_config(config: Any, num_classes: int, image_size: int,
                      quant: QuantConfig):
  m = config.model
  return build_model(m.name, num_classes=num_classes, quant=quant,
                     block=m.get("block", "basic"), stem=m.get("stem", "auto"),
                     shortcut=m.get("shortcut", "projection"),
                     image_size=image_size,
                     width_mult=m.get("width_mult", 1.0),
                     dropout=m.get("dropout", None),
                     dtype=m.get("dtype", "float32"))


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def transfer_params(src: dict, dst: dict) -> dict:
  """Copies every array of `src` (e.g. the FP teacher) into `dst` (student).

  The student has the same layers plus LSQ step sizes; those (absent from the
  teacher) keep the student's values. A teacher array the student lacks, or
  of another shape, means the two models differ: ValueError.
  """
  src_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(src))
  dst_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dst))
  for path, value in src_flat.items():
    if path not in dst_flat:
      raise ValueError(f"teacher parameter {'/'.join(path)} has no "
                       "counterpart in the student: the models differ")
    if np.shape(dst_flat[path]) != np.shape(value):
      raise ValueError(
          f"teacher parameter {'/'.join(path)} has shape {np.shape(value)}, "
          f"the student's {np.shape(dst_flat[path])}: the models differ")
    dst_flat[path] = value
  return flax.traverse_util.unflatten_dict(dst_flat)


def init_variables(model, image_shape, seed: int | jax.Array,
                   sample: np.ndarray | None = None) -> dict:
  """`model`'s initial variables (activation steps from `sample` if given).

  `seed` is an integer or a jax key (e.g. `rngs.key(seed, "teacher_init")`).
  """
  x = (jnp.zeros((2, *image_shape), jnp.float32) if sample is None
       else jnp.asarray(sample))
  rng = jax.random.key(seed) if isinstance(seed, int) else seed
  return jax.jit(lambda x, rng: model.init(rng, x, train=False))(x, rng)


def student_from_teacher(student_model, teacher_variables: dict,
                         sample: np.ndarray, seed: int | jax.Array) -> dict:
  """The student's starting variables: the teacher's, plus LSQ step sizes.

  Every kernel and BatchNorm statistic is the teacher's; every step size is
  then calibrated on `sample` (an unaugmented training batch): weights
  2*mean|w|/sqrt(Qp) of the teacher's kernels, activations 2*mean|x|/sqrt(Qp)
  of what each quantizer sees. `teacher_variables` are host (numpy) arrays:
  in a multi-process run, fetch them with `sharding.to_host` first.
  """
  teacher = jax.tree.map(np.asarray, teacher_variables)
  student = init_variables(student_model, np.shape(sample)[1:], seed, sample)
  params = transfer_params(teacher["params"],
                           jax.tree.map(np.asarray, student["params"]))
  return calibrate(student_model, {"params": params,
                                   "batch_stats": teacher["batch_stats"]},
                   jnp.asarray(sample))


__all__ = ["MODELS", "MobileNetV2", "ResNet", "ResNet18", "ResNet20",
           "ResNet34", "ResNetTiny", "build_model", "count_params",
           "init_variables", "model_from_config", "student_from_teacher",
           "transfer_params"]
