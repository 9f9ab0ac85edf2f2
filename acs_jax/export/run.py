"""A finished run's student: its config, dataset, model and trained variables.

`load_run(workdir, checkpoint)` reads, and never writes:
  WORKDIR/config.json             the run's config,
  WORKDIR/summary.json            written when the run finished (its student
                                  test top-1 figures),
  WORKDIR/checkpoints/train/latest/<train.epochs>/state   ("last"), or
  WORKDIR/checkpoints/train/best/<epoch>/state            ("best"),
and rebuilds the test set with the input normalisation the run used (the
teacher's recorded one, as `config_lib.resolve_normalization` chose it).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from acs_jax import checkpoint as ckpt_lib
from acs_jax import config_lib
from acs_jax import models
from acs_jax import quant
from acs_jax import train
from acs_jax.data import datasets
from acs_jax.export.format import ExportError

CHECKPOINTS = ("last", "best")


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: str
  config: Any
  dataset: Any
  model: Any
  variables: dict
  quant: quant.QuantConfig
  checkpoint: str
  epoch: int
  reported_top1: float
  normalization: str


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ExportError(f"{path}: unreadable {what} ({e})") from None


def _finished_student(workdir: str, config) -> dict:
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    raise ExportError(
        f"--workdir={workdir!r} has no finished student: there is no "
        "summary.json, which a run writes when its QAT stage ends. Finish "
        f"the run first (rerun python -m acs_jax.main with --workdir={workdir}"
        " and the same --config: it resumes)")
  summary = _read_json(summary_path, "summary.json")
  if not config.train.epochs or summary.get(
      "student_final_test_top1") is None:
    raise ExportError(
        f"--workdir={workdir!r} has no student: the run trained only the "
        f"teacher (config.train.epochs={config.train.epochs}); export a run "
        "with a QAT stage")
  return summary


def _step_dir(workdir: str, checkpoint: str, epochs: int) -> tuple[str, int]:
  kind = "latest" if checkpoint == "last" else "best"
  base = os.path.join(workdir, "checkpoints", "train", kind)
  found = sorted((int(d) for d in (os.listdir(base) if os.path.isdir(base)
                                   else []) if d.isdigit()))
  if checkpoint == "last":
    epoch = epochs
    if epoch not in found:
      raise ExportError(
          f"--workdir={workdir!r} has no checkpoint of its last epoch "
          f"({base}/{epoch} is missing; found: {found or 'none'}): the "
          "student is not finished there, or its checkpoints were removed")
  else:
    if not found:
      raise ExportError(f"--workdir={workdir!r} has no best checkpoint "
                        f"({base} is empty or missing); use --checkpoint=last")
    epoch = found[-1]
  path = os.path.join(base, str(epoch))
  if not os.path.exists(os.path.join(path, "meta")):
    raise ExportError(f"checkpoint {path} is incomplete (no meta); it cannot "
                      "be exported")
  return path, epoch


def _restore_state(path: str) -> dict:
  try:
    state = ckpt_lib.read_state(path)
  except ckpt_lib.CheckpointError as e:
    raise ExportError(str(e)) from None
  return {"params": jax.tree.map(np.asarray, state["params"]),
          "batch_stats": jax.tree.map(np.asarray, state["batch_stats"])}


def _check_variables(model, variables: dict, image_shape, path: str) -> None:
  like = jax.eval_shape(lambda: models.init_variables(model, image_shape, 0))
  want = {k: v.shape for k, v in _flat(like).items()}
  have = {k: np.shape(v) for k, v in _flat(variables).items()}
  if want != have:
    diff = sorted(set(want) ^ set(have)) or sorted(
        k for k in want if want[k] != have[k])
    raise ExportError(f"checkpoint {path} does not hold the model its "
                      f"config.json describes (differences: "
                      f"{', '.join(diff[:4])})")


def _flat(tree) -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(dict(tree))).items()}


def load_run(workdir: str, checkpoint: str = "last") -> Run:
  """The finished student of the run in `workdir` (ExportError if none)."""
  if checkpoint not in CHECKPOINTS:
    raise ExportError(f"--checkpoint={checkpoint!r} is not valid; valid "
                      f"values: {', '.join(CHECKPOINTS)}")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    hint = (" (it is a teacher checkpoint: a full-precision model, nothing "
            "to export)" if os.path.exists(os.path.join(workdir,
                                                        "teacher.json"))
            else "")
    raise ExportError(f"--workdir={workdir!r} is not a run's workdir: it has "
                      f"no config.json{hint}")
  config = ml_collections.ConfigDict(_read_json(config_path, "config.json"))
  try:
    qc = quant.from_config(config.quant)
  except ValueError as e:
    raise ExportError(f"{config_path}: {e}") from None
  if qc.is_float or not (qc.quantize_blocks or qc.quantize_stem
                         or qc.quantize_shortcut or qc.quantize_classifier):
    raise ExportError(
        f"--workdir={workdir!r} is a float (32-bit) run "
        f"(config.quant.bits={config.quant.bits!r}): nothing is quantized, "
        "so there are no integer codes to export; export a run with "
        "config.quant.bits like 'w2', 'w4a4'")
  summary = _finished_student(workdir, config)
  path, epoch = _step_dir(workdir, checkpoint, int(config.train.epochs))
  try:
    dataset = datasets.load_dataset(config_lib.data_options(config.data))
    source = train.teacher_source(config, workdir)
    teacher_meta = ckpt_lib.read_teacher_meta(source) if source else None
    dataset = config_lib.resolve_normalization(dataset, config.data.normalization,
                                          teacher_meta, source)
  except (ValueError, FileNotFoundError) as e:
    raise ExportError(f"the test set of the run in {workdir} cannot be "
                      f"rebuilt: {e}") from None
  model = models.model_from_config(config, dataset.num_classes,
                                   dataset.image_shape[0], qc)
  variables = _restore_state(path)
  _check_variables(model, variables, dataset.image_shape, path)
  reported = summary.get("student_final_test_top1" if checkpoint == "last"
                         else "student_best_test_top1")
  return Run(workdir=workdir, config=config, dataset=dataset, model=model,
             variables=variables, quant=qc, checkpoint=checkpoint,
             epoch=epoch, reported_top1=reported,
             normalization=config_lib.normalization_name(config, teacher_meta))
