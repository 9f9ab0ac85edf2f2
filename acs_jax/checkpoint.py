"""Checkpoints (the one module that imports orbax).

* The teacher: `save_teacher` / `load_teacher`, a directory with the FP
  model's variables and a JSON description (model, dataset, accuracy) that is
  checked on load, so a teacher of another architecture is refused clearly.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt or from an incompatible config."""


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save_teacher(directory: str, variables: Any, meta: dict) -> None:
  """Writes the teacher's variables and `meta` (JSON) under `directory`."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, "variables")):
    raise CheckpointError(f"{directory} already holds a teacher; refusing "
                          "to overwrite it")
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "variables"),
               jax.tree.map(np.asarray, variables))
  with open(os.path.join(directory, "teacher.json"), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)


def load_teacher(directory: str, like: Any, expect: dict) -> tuple[Any, dict]:
  """Restores teacher variables shaped like `like` (e.g. from eval_shape).

  Args:
    directory: a directory written by save_teacher.
    like: a pytree of arrays or ShapeDtypeStructs with the expected layout.
    expect: meta fields that must match (e.g. model name, num_classes).

  Returns:
    (variables as numpy arrays, meta).

  Raises:
    CheckpointError: missing, corrupt or incompatible checkpoint. Nothing is
      written or deleted.
  """
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, "teacher.json")
  if not os.path.exists(meta_path):
    raise CheckpointError(
        f"config.teacher.checkpoint={directory!r} is not a teacher checkpoint "
        "(no teacher.json); it is written by a run's teacher stage into "
        "WORKDIR/teacher")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"teacher checkpoint {directory}: unreadable "
                          f"teacher.json ({e})") from None
  for key, value in expect.items():
    if meta.get(key) != value:
      raise CheckpointError(
          f"teacher checkpoint {directory} is incompatible with this config: "
          f"{key}={meta.get(key)!r} there, {value!r} here")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(os.path.join(directory, "variables"),
                               _abstract(like))
  except Exception as e:  # orbax raises many types for damaged files.
    raise CheckpointError(f"teacher checkpoint {directory} could not be "
                          f"restored (corrupt or incompatible): "
                          f"{type(e).__name__}: {e}") from None
  return jax.tree.map(np.asarray, restored), meta
