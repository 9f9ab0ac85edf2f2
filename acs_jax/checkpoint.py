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
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from acs_jax import sharding


# Fields that may change between a run and its resumption.
_RESUMABLE_FIELDS = ("checkpoint.", "log_every_steps", "train.eval_batch_size",
                     "coreset.score_batch_size", "data.data_dir",
                     "data.manual_dir", "data.path")


# Fields added after runs were made, at the value that reproduces those runs:
# left out of the fingerprint at that value, so an older checkpoint or
# config.json (without the field) still matches a config that leaves it so.
_ADDED_FIELDS = {"coreset.exclude_teacher_errors": False}


# What the teacher stage depends on: a student-only change (QAT, coreset,
# quantization) never invalidates a finished or half-trained teacher.
_TEACHER_FIELDS = ("seed", "data.", "model.", "teacher.")


def config_fingerprint(config: ml_collections.ConfigDict,
                       stage: str = "train") -> dict:
  """Flat {"a.b": value} of every field that a resumed `stage` must share."""
  flat = {}

  def walk(d, prefix):
    for k, v in d.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        walk(v, key + ".")
      elif key in _ADDED_FIELDS and v == _ADDED_FIELDS[key]:
        continue
      elif not key.startswith(_RESUMABLE_FIELDS) and (
          stage != "teacher" or key.startswith(_TEACHER_FIELDS)):
        flat[key] = list(v) if isinstance(v, tuple) else v
  walk(config, "")
  return flat


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt or from an incompatible config."""


def _cause(error: BaseException, limit: int = 300) -> str:
  """The root cause of an orbax/TensorStore error in one short line (their
  messages can run to a thousand lines of nested context)."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  text = lines[-1] if lines else ""
  for line in lines:  # TensorStore puts the decoder's failure in one line
    if "failed" in line.lower() or "error" in line.lower():
      text = line
      break
  text = f"{type(error).__name__}: {text}"
  return text if len(text) <= limit else text[:limit] + " ..."


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save_teacher(directory: str, variables: Any, meta: dict) -> None:
  """Writes the teacher's variables and `meta` (JSON) under `directory`.

  With several processes every process must call it (orbax's save is a
  collective) with the same values; process 0 writes the files, into
  storage that all hosts share.
  """
  directory = os.path.abspath(directory)
  exists = os.path.exists(os.path.join(directory, "variables"))
  # One answer for all processes: a lone raiser would hang the rest.
  if bool(sharding.broadcast_from_primary(np.asarray(exists))):
    raise CheckpointError(f"{directory} already holds a teacher; refusing "
                          "to overwrite it")
  if sharding.is_primary():
    os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "variables"),
               jax.tree.map(np.asarray, variables))
  if sharding.is_primary():
    with open(os.path.join(directory, "teacher.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
  sharding.sync("acs_jax save_teacher done")  # teacher.json exists for all


# teacher.json fields that older teachers lack, with the value they meant.
_TEACHER_META_DEFAULTS = {"shortcut": "projection"}


def read_teacher_meta(directory: str) -> dict:
  """The teacher.json of a teacher directory (CheckpointError if absent)."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, "teacher.json")
  if not os.path.exists(meta_path):
    raise CheckpointError(
        f"config.teacher.checkpoint={directory!r} is not a teacher checkpoint "
        "(no teacher.json); it is written by a run's teacher stage into "
        "WORKDIR/teacher, or by `python -m acs_jax.pretrained.convert` from a "
        "PyTorch checkpoint")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"teacher checkpoint {directory}: unreadable "
                          f"teacher.json ({e})") from None
  return {**_TEACHER_META_DEFAULTS, **meta}


def _meta_matches(key: str, saved: Any, value: Any, meta: dict) -> bool:
  if key == "stem" and saved == "auto":  # written before stems were resolved
    saved = "imagenet" if meta.get("image_shape", [0])[0] >= 64 else "cifar"
  return saved == value


# teacher.json field -> the config field that must agree with it.
_MODEL_FIELDS = {"model": "model.name", "block": "model.block",
                 "stem": "model.stem", "shortcut": "model.shortcut",
                 "width_mult": "model.width_mult"}


def check_teacher_meta(directory: str, meta: dict, expect: dict) -> None:
  """Refuses a teacher whose recorded model differs from `expect`."""
  wrong = [k for k, v in expect.items()
           if not _meta_matches(k, meta.get(k), v, meta)]
  if not wrong:
    return
  fields = "; ".join(f"{k}={meta.get(k)!r} there, {expect[k]!r} here"
                     for k in wrong)
  fixes = " ".join(f"--config.{_MODEL_FIELDS[k]}={meta.get(k)}"
                   for k in wrong if k in _MODEL_FIELDS)
  raise CheckpointError(
      f"teacher checkpoint {os.path.abspath(directory)} is incompatible with "
      f"this config: {fields}"
      + (f" (to use this teacher: {fixes})" if fixes else ""))


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
  meta = read_teacher_meta(directory)
  check_teacher_meta(directory, meta, expect)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(os.path.join(directory, "variables"),
                               _abstract(like))
  except Exception as e:  # orbax raises many types for damaged files.
    raise CheckpointError(f"teacher checkpoint {directory} could not be "
                          f"restored (corrupt or incompatible): "
                          f"{_cause(e)}") from None
  return jax.tree.map(np.asarray, restored), meta


# ---------------------------------------------------------------------------
# Run checkpoints: train state + selector state at epoch boundaries.


def read_state(step_dir: str) -> dict:
  """The train state saved in one step directory of a RunCheckpointer
  (`<stage dir>/{latest,best}/<epoch>`), as saved (no target tree needed).

  Raises CheckpointError when it is missing, corrupt or incomplete.
  """
  try:
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(os.path.join(step_dir, "state"))
  except Exception as e:  # orbax raises many types for damaged files.
    raise CheckpointError(f"checkpoint {step_dir} could not be restored "
                          f"(corrupt or incomplete): {_cause(e)}") from None


class RunCheckpointer:
  """Epoch-boundary checkpoints of one training stage, for resuming.

  Layout: `<directory>/latest/<epoch>/` (the last `keep`) and
  `<directory>/best/<epoch>/` (the best by test top-1), each holding
    state:    {"params", "batch_stats", "opt_state", "step"} (orbax, exact),
    selector: the selector's numpy arrays (coreset indices, forgetting
              counters), possibly empty,
    meta:     JSON: epoch, best metrics, the selector's scalars, and the
              config fingerprint that a resuming run must match.
  The random state needs no saving: every draw is a function of the config
  seed, the epoch and the step (fold_in), all of which are restored.
  Saves are asynchronous (orbax copies device arrays to host before
  returning, so donating the state afterwards is safe).
  """

  def __init__(self, directory: str, *, keep: int, fingerprint: dict):
    self.directory = os.path.abspath(directory)
    self.fingerprint = fingerprint
    self._managers = {}
    self._keep = keep

  def _manager(self, kind: str) -> ocp.CheckpointManager:
    if kind not in self._managers:
      # orbax names its multi-host commit barrier after the step directory
      # ("<prefix>_async_commit_complete.<step>"): without a prefix of its
      # own, the "latest" and "best" saves of one epoch (and the two stages)
      # share a barrier, and overlapping ones fail ("already ongoing").
      opts = ocp.CheckpointManagerOptions(
          max_to_keep=self._keep if kind == "latest" else 1, create=True,
          enable_async_checkpointing=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=self.barrier_prefix(kind)))
      self._managers[kind] = ocp.CheckpointManager(
          os.path.join(self.directory, kind), options=opts)
    return self._managers[kind]

  def barrier_prefix(self, kind: str) -> str:
    """The multi-host barrier prefix of one manager: the same on every
    process, distinct for every stage directory and kind."""
    return f"{os.path.basename(self.directory)}_{kind}"

  def latest_epoch(self) -> int | None:
    """The newest complete checkpoint's epoch, without creating anything."""
    path = os.path.join(self.directory, "latest")
    if not os.path.isdir(path):
      return None
    steps = [d for d in os.listdir(path) if d.isdigit()]
    # orbax renames a step into place only when it is complete: a step
    # without its meta was damaged afterwards. Never skip it silently.
    broken = sorted((d for d in steps
                     if not os.path.exists(os.path.join(path, d, "meta"))),
                    key=int)
    if broken:
      step = os.path.join(path, broken[-1])
      raise CheckpointError(
          f"checkpoint {step} is incomplete (its meta is missing); move it "
          f"away (e.g. mv {step} {step}.broken) to resume from the step "
          "before it; nothing was changed in the workdir")
    return max(map(int, steps)) if steps else None

  def check_compatible(self) -> None:
    """Refuses (CheckpointError) a checkpoint written under another config.

    Reads only the JSON meta; writes nothing.
    """
    epoch = self.latest_epoch()
    if epoch is None:
      return
    meta = self._read_meta(epoch)
    saved = meta.get("fingerprint", {})
    diff = {k: (saved.get(k), v) for k, v in self.fingerprint.items()
            if saved.get(k) != v}
    if diff:
      fields = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now"
                         for k, (a, b) in sorted(diff.items()))
      raise CheckpointError(
          f"the checkpoint in {self.directory} (epoch {epoch}) comes from an "
          f"incompatible config ({fields}). Use another --workdir, or restore "
          "those values; nothing was changed in the workdir.")

  def _read_meta(self, epoch: int) -> dict:
    path = os.path.join(self.directory, "latest", str(epoch), "meta",
                        "metadata")
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise CheckpointError(
          f"checkpoint {os.path.dirname(os.path.dirname(path))} is corrupt "
          f"(its meta cannot be read: {e}); move it away to start afresh, "
          "nothing was changed in the workdir") from None

  def restore(self, state_like: dict) -> tuple[dict, dict, dict] | None:
    """(state arrays, selector arrays, meta) of the latest checkpoint.

    Returns None when there is none. Raises CheckpointError when it is
    corrupt or incompatible; nothing is written or deleted then.
    """
    epoch = self.latest_epoch()
    if epoch is None:
      return None
    self.check_compatible()
    try:
      restored = self._manager("latest").restore(
          epoch, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(_abstract(state_like)),
              selector=ocp.args.StandardRestore(),
              meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files.
      raise CheckpointError(
          f"checkpoint {self.directory}/latest/{epoch} could not be restored "
          f"(corrupt or incompatible): {_cause(e)}. Move it away "
          "to resume from an earlier one; nothing was changed in the "
          "workdir") from None
    selector = {k: np.asarray(v) for k, v in (restored.selector or {}).items()}
    return restored.state, selector, dict(restored.meta)

  def save(self, epoch: int, state: dict, selector: dict, meta: dict,
           is_best: bool = False) -> None:
    meta = {**meta, "epoch": int(epoch), "fingerprint": self.fingerprint}
    # An empty selector dict is not a valid orbax item: keep one scalar.
    selector = dict(selector) or {"_empty": np.zeros((), np.int8)}
    kinds = ("latest", "best") if is_best else ("latest",)
    for kind in kinds:
      self._manager(kind).save(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          selector=ocp.args.StandardSave(selector),
          meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    for m in self._managers.values():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers.values():
      m.wait_until_finished()
      m.close()
    self._managers = {}
