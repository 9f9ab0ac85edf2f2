"""The base experiment config and its validation.

Every file in configs/ starts from `get_base_config()` and changes a few
fields. `validate(config)` runs before any work and raises ConfigError with
one message that names the field and its valid values.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from acs_jax import models
from acs_jax import quant
from acs_jax import steps
from acs_jax.coreset import baselines
from acs_jax.coreset import schedule as schedule_lib
from acs_jax.coreset import selector as selector_lib
from acs_jax.data import datasets

# Valid values, defined where they are used (listed here for messages).
DATA_SOURCES = datasets.SOURCES
OPTIMIZERS = steps.OPTIMIZERS
LR_SCHEDULES = steps.LR_SCHEDULES
LOSSES = steps.LOSSES
SELECTORS = tuple(baselines.SELECTORS)
MODEL_NAMES = models.MODELS
BLOCKS = models.BLOCKS
STEMS = ("auto", *models.STEMS)
SHORTCUTS = models.SHORTCUTS
DTYPES = tuple(models.DTYPES)
NORMALIZATIONS = ("auto", "dataset", *datasets.NORMALIZATIONS)


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file at `path` (configs that build on one
  another load their base this way: configs/ is not a package)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"acs_jax_config_{name}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """Optimiser + LR schedule fields shared by the teacher and QAT stages."""
  c = ml_collections.ConfigDict()
  c.epochs = 200
  c.batch_size = 256
  c.optimizer = "sgd"          # sgd (Nesterov momentum) | adam
  c.lr = 0.01
  c.momentum = 0.9
  c.nesterov = True
  c.b1 = 0.9                   # adam
  c.b2 = 0.999
  c.weight_decay = 5e-4        # conv/dense kernels only (coupled L2, as torch)
  c.schedule = "linear"        # cosine | linear (to zero) | step | constant
  c.warmup_epochs = 0.0
  c.step_milestones = (0.5, 0.75)  # fractions of training, for "step"
  c.step_gamma = 0.1
  c.update(overrides)
  return c


def get_base_config() -> ml_collections.ConfigDict:
  """Defaults follow the paper's official CIFAR recipe."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "tfds"          # tfds | npz | image_folder | digits | synthetic
  config.data.name = "cifar10"         # tfds name (cifar10, cifar100, ...)
  config.data.data_dir = ""            # tfds data_dir ("" = TFDS default)
  config.data.manual_dir = ""          # imagenet2012 manual download dir
  config.data.path = ""                # .npz file or image-folder root
  config.data.image_size = 0           # image_folder resize / crop (0 = default)
  config.data.channels = 0             # image_folder / synthetic (0 = default)
  config.data.augment = "auto"         # auto | cifar | crop | imagenet | none
  # Input normalisation: auto (the loaded teacher's, else the data's own
  # statistics) | dataset | imagenet | cifar10 | cifar100.
  config.data.normalization = "auto"
  config.data.label_noise = 0.0        # symmetric noise on training labels
  config.data.seed = 0                 # seeds label noise / synthetic data
  # synthetic source only:
  config.data.num_train = 512
  config.data.num_test = 256
  config.data.num_classes = 4

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"
  config.model.block = "basic"         # basic | official
  config.model.stem = "auto"           # auto | cifar | imagenet
  config.model.shortcut = "projection"  # projection | zero_pad (He et al. A)
  config.model.width_mult = 1.0        # mobilenetv2
  config.model.dropout = 0.2           # mobilenetv2
  config.model.dtype = "float32"       # compute dtype: float32 | bfloat16

  config.quant = ml_collections.ConfigDict()
  config.quant.bits = "w2"             # "w2" = W2/A32, "w4a4" = W4/A4, ...
  config.quant.act_signed = "auto"     # auto | signed | unsigned
  config.quant.per_channel = False
  config.quant.quantize_blocks = True
  config.quant.quantize_stem = False
  config.quant.quantize_shortcut = False
  config.quant.quantize_classifier = False

  # Stage 1: the full-precision teacher (trained unless a checkpoint is given).
  config.teacher = optim_config(epochs=30, lr=0.1, schedule="cosine")
  config.teacher.checkpoint = ""       # a teacher checkpoint dir to load
  # Epochs of training a loaded checkpoint on this run's data before QAT
  # (with the fields above: lr, schedule, batch size); 0 uses it as it is.
  config.teacher.finetune_epochs = 0

  # Stage 2: QAT of the student on the coreset.
  config.train = optim_config()
  config.train.loss = "kd"             # kd | ce | kd+ce
  config.train.kd_alpha = 0.5          # weight of kd in "kd+ce"
  config.train.step_size_lr_mult = 0.1  # LSQ step sizes train at lr/10
  config.train.eval_every = 1          # epochs
  config.train.eval_batch_size = 0     # 0 = train batch size

  config.coreset = ml_collections.ConfigDict()
  config.coreset.selector = "acs"      # see acs_jax.coreset.baselines
  config.coreset.fraction = 0.1
  config.coreset.data_update_epochs = 10  # R
  config.coreset.schedule = "cosine"   # beta(t), see selector.SCHEDULES
  config.coreset.constant_beta = 0.5   # for schedule "constant"
  config.coreset.balance = True        # per-class budgets
  config.coreset.warmup_epochs = 0     # one-shot baselines select after these
  config.coreset.adaptive = "auto"     # auto | yes | no: re-select every R
  config.coreset.score_batch_size = 0  # 0 = eval batch size
  config.coreset.glister_val_fraction = 0.1
  # ACS only: samples whose teacher top-1 (on the unaugmented image) is not
  # their label are taken only where a class has too few others.
  config.coreset.exclude_teacher_errors = False

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1
  config.checkpoint.keep = 2

  config.log_every_steps = 50
  return config


def _choice(value, valid, field):
  if value not in valid:
    raise ConfigError(f"config.{field}={value!r} is not valid; valid values: "
                      f"{', '.join(map(str, valid))}")


def _positive(value, field, integer=True, allow_zero=False):
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  ok = ok and not isinstance(value, bool)
  if not ok or value < 0 or (value == 0 and not allow_zero):
    kind = "an integer" if integer else "a number"
    bound = ">= 0" if allow_zero else ">= 1" if integer else "> 0"
    raise ConfigError(f"config.{field}={value!r} is not valid; it must be "
                      f"{kind} {bound}")


def _validate_optim(c, prefix):
  # teacher.epochs 0: an untrained teacher; train.epochs 0: no QAT stage
  # (the teacher is trained or loaded and evaluated).
  _positive(c.epochs, f"{prefix}.epochs", allow_zero=True)
  _positive(c.batch_size, f"{prefix}.batch_size")
  _choice(c.optimizer, OPTIMIZERS, f"{prefix}.optimizer")
  _choice(c.schedule, LR_SCHEDULES, f"{prefix}.schedule")
  _positive(c.lr, f"{prefix}.lr", integer=False)
  _positive(c.weight_decay, f"{prefix}.weight_decay", integer=False,
            allow_zero=True)
  _positive(c.warmup_epochs, f"{prefix}.warmup_epochs", integer=False,
            allow_zero=True)


def data_options(data: ml_collections.ConfigDict) -> datasets.DataOptions:
  """config.data as the typed options `datasets.load_dataset` takes.

  Raises:
    ConfigError: a field has an invalid value (named, with the valid ones).
  """
  try:
    return datasets.DataOptions.from_mapping(data)
  except ValueError as e:  # DataOptions names the config.data field
    raise ConfigError(str(e)) from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field that can be checked without loading data."""
  d = config.data
  _choice(d.source, DATA_SOURCES, "data.source")
  data_options(d)
  if d.source in ("npz", "image_folder"):
    if not d.path:
      raise ConfigError(f"config.data.path is empty; data.source={d.source!r} "
                        "needs the path of the .npz file / image folder")
    if not os.path.exists(d.path):
      raise ConfigError(f"config.data.path={d.path!r} does not exist")
  _choice(d.normalization, NORMALIZATIONS, "data.normalization")
  m = config.model
  _choice(m.name, MODEL_NAMES, "model.name")
  _choice(m.block, BLOCKS, "model.block")
  _choice(m.stem, STEMS, "model.stem")
  _choice(m.shortcut, SHORTCUTS, "model.shortcut")
  if m.shortcut == "zero_pad" and m.name == "mobilenetv2":
    raise ConfigError("config.model.shortcut='zero_pad' is a ResNet option; "
                      "mobilenetv2 has no such shortcut (use 'projection')")
  _choice(m.dtype, DTYPES, "model.dtype")
  try:
    qc = quant.from_config(config.quant)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if qc.is_float:
    raise ConfigError("config.quant.bits='fp' leaves nothing to quantize; "
                      "valid values: 'w<B>' or 'w<B>a<B>' (e.g. 'w2', "
                      "'w4a4')")
  _validate_optim(config.teacher, "teacher")
  if config.teacher.checkpoint and not os.path.isdir(config.teacher.checkpoint):
    raise ConfigError(f"config.teacher.checkpoint={config.teacher.checkpoint!r}"
                      " is not a directory")
  _positive(config.teacher.finetune_epochs, "teacher.finetune_epochs",
            allow_zero=True)
  if config.teacher.finetune_epochs and not config.teacher.checkpoint:
    raise ConfigError(
        f"config.teacher.finetune_epochs={config.teacher.finetune_epochs} "
        "needs config.teacher.checkpoint (the teacher to fine-tune); without "
        "one, config.teacher.epochs trains a teacher from scratch")
  _validate_optim(config.train, "train")
  _choice(config.train.loss, LOSSES, "train.loss")
  if not 0.0 <= config.train.kd_alpha <= 1.0:
    raise ConfigError(f"config.train.kd_alpha={config.train.kd_alpha!r} is "
                      "not valid; it must be in [0, 1]")
  _positive(config.train.eval_every, "train.eval_every")
  c = config.coreset
  _choice(c.selector, SELECTORS, "coreset.selector")
  f = c.fraction
  if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
    raise ConfigError(f"config.coreset.fraction={f!r} is not valid; it must "
                      "be in (0, 1]")
  _positive(c.data_update_epochs, "coreset.data_update_epochs")
  _choice(c.schedule, selector_lib.SCHEDULES, "coreset.schedule")
  if not 0.0 <= c.constant_beta <= 1.0:
    raise ConfigError(f"config.coreset.constant_beta={c.constant_beta!r} is "
                      "not valid; it must be in [0, 1]")
  _positive(c.warmup_epochs, "coreset.warmup_epochs", allow_zero=True)
  _choice(c.adaptive, schedule_lib.ADAPTIVE, "coreset.adaptive")
  if not isinstance(c.exclude_teacher_errors, bool):
    raise ConfigError("config.coreset.exclude_teacher_errors="
                      f"{c.exclude_teacher_errors!r} is not valid; it must "
                      "be True or False")
  if c.exclude_teacher_errors and c.selector != "acs":
    raise ConfigError("config.coreset.exclude_teacher_errors=True is valid "
                      f"only with selector 'acs', not {c.selector!r}")
  if c.selector == "forgetting" and c.warmup_epochs < 1:
    raise ConfigError("config.coreset.warmup_epochs=0 is not valid for "
                      "selector 'forgetting': forgetting events are counted "
                      "during warm-up training; use >= 1")
  if config.train.epochs and c.warmup_epochs >= config.train.epochs:
    raise ConfigError(f"config.coreset.warmup_epochs={c.warmup_epochs} must "
                      f"be < config.train.epochs={config.train.epochs}")
  _positive(config.checkpoint.every_epochs, "checkpoint.every_epochs")
  _positive(config.checkpoint.keep, "checkpoint.keep")


# ---------------------------------------------------------------------------
# Resolved against the teacher: the input normalisation.


def resolve_normalization(dataset, requested: str, teacher_meta: dict | None,
                          source: str = ""):
  """The dataset with the input normalisation the run must use.

  "auto": the teacher's recorded normalisation if it has one, else the
  dataset's own statistics; "dataset" or a name of datasets.NORMALIZATIONS:
  exactly that, refused (ConfigError) when the teacher was trained with
  another.
  """
  recorded = None
  if teacher_meta and "mean" in teacher_meta:
    recorded = (tuple(teacher_meta["mean"]), tuple(teacher_meta["std"]))
  if requested == "auto":
    stats = recorded or (dataset.mean, dataset.std)
  elif requested == "dataset":
    stats = (dataset.mean, dataset.std)
  else:
    stats = datasets.NORMALIZATIONS[requested]
  if len(stats[0]) != dataset.image_shape[-1]:
    raise ConfigError(
        f"config.data.normalization={requested!r} has {len(stats[0])} "
        f"channels, the data {dataset.image_shape[-1]}")
  if recorded is not None and not np.allclose(stats, recorded, atol=1e-6):
    raise ConfigError(
        f"config.data.normalization={requested!r} (mean "
        f"{_fmt(stats[0])}, std {_fmt(stats[1])}) contradicts the teacher "
        f"{source}, trained with mean {_fmt(recorded[0])}, std "
        f"{_fmt(recorded[1])} ({teacher_meta.get('normalization', 'its own')})"
        "; use 'auto' to take the teacher's")
  return dataclasses.replace(dataset, mean=tuple(map(float, stats[0])),
                             std=tuple(map(float, stats[1])))


def normalization_name(config, teacher_meta: dict | None) -> str:
  """The name of the normalisation resolve_normalization chose."""
  if config.data.normalization != "auto":
    return config.data.normalization
  if teacher_meta and "mean" in teacher_meta:
    return teacher_meta.get("normalization", "teacher")
  return "dataset"


def _fmt(values) -> str:
  return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
