"""The paper's procedure from config to result: FP teacher, then QAT on ACS.

    train_and_evaluate(config, workdir)

Stage 1 trains the full-precision teacher on the full training set (or loads
it from config.teacher.checkpoint), reports its test accuracy and saves it to
WORKDIR/teacher. Stage 2 initialises the quantized student from the teacher's
weights (LSQ step sizes calibrated on a training batch), then trains it with
knowledge distillation from the frozen teacher on the current coreset; the
selector runs at epoch 0 and every R epochs (ACS) or once after warm-up
(one-shot baselines). Outputs in WORKDIR: metrics.jsonl, TensorBoard events
(tb/), selections/ (indices and per-class counts of every selection),
config.json and summary.json.

About 530 lines, on purpose in one module: the two stages share the epoch
loop (resume, divergence checks, per-phase timing, checkpoints), and the
checks made before any work need both stages' view. The re-selection driver
is coreset/schedule.py; the config checks are config_lib's.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from acs_jax import checkpoint as ckpt_lib
from acs_jax import config_lib
from acs_jax import env
from acs_jax import models
from acs_jax import quant
from acs_jax import rngs
from acs_jax import sharding
from acs_jax import steps
from acs_jax import workdir as workdir_lib
from acs_jax.coreset import baselines
from acs_jax.coreset import schedule as schedule_lib
from acs_jax.coreset import scores as scores_lib
from acs_jax.data import datasets
from acs_jax.data import input_pipeline
from acs_jax.metrics import MetricsWriter, progress

ConfigError = config_lib.ConfigError


class DivergenceError(RuntimeError):
  """Training produced a non-finite loss; the run stopped without saving."""


# ---------------------------------------------------------------------------
# Small host-side helpers.


def _eval_batch_size(config) -> int:
  return config.train.eval_batch_size or config.train.batch_size


def _check_batch(batch: int, field: str, n_dev: int) -> None:
  try:
    sharding.check_batch(batch, n_dev, f"config.{field}")
  except ValueError as e:
    raise ConfigError(str(e)) from None


# ---------------------------------------------------------------------------
# Device-side functions, jitted once per run.


class Runner:
  """Holds one model's jitted step functions, bound to the mesh."""

  def __init__(self, model, mesh, *, loss: str, kd_alpha: float,
               lr_schedule, teacher_model=None):
    self.model = model
    self.mesh = mesh
    repl = sharding.replicated(mesh)
    teacher_apply = teacher_model.apply if teacher_model is not None else None
    self.train_step = jax.jit(
        functools.partial(steps.train_step, apply_fn=model.apply, loss=loss,
                          kd_alpha=kd_alpha, teacher_apply_fn=teacher_apply,
                          lr_schedule=lr_schedule),
        in_shardings=(repl, sharding.data_sharded(mesh), repl, repl),
        out_shardings=(repl, repl), donate_argnums=(0,))
    self.eval_step = jax.jit(functools.partial(steps.eval_step,
                                               apply_fn=model.apply),
                             out_shardings=repl)
    self.score_fn = scores_lib.make_score_fn(
        lambda v, x: model.apply(v, x, train=False, features=True))


def evaluate(runner: Runner, variables, dataset, batch_size: int,
             split: str = "test") -> dict[str, float]:
  """Top-1/top-5/loss over every sample of `split` exactly once."""
  totals = None
  it = input_pipeline.make_eval_iterator(
      dataset, split, batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  for batch in it:
    out = runner.eval_step(variables, sharding.host_to_global(batch,
                                                              runner.mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.tree.map(float, sharding.to_host(totals))
  n = max(totals["count"], 1.0)
  return {"top1": totals["top1"] / n, "top5": totals["top5"] / n,
          "loss": totals["loss"] / n, "count": int(totals["count"])}


def _first_train_batch(dataset, batch_size: int, seed: int) -> np.ndarray:
  """A deterministic unaugmented training batch (for LSQ calibration)."""
  n = dataset.num_examples("train")
  rng = np.random.default_rng(seed)
  idx = np.sort(rng.choice(n, size=min(batch_size, n), replace=False))
  it = input_pipeline.make_train_iterator(
      dataset, idx, global_batch=len(idx), seed=seed, epoch=0, augment=False)
  return next(iter(it))["image"]


# ---------------------------------------------------------------------------
# The epoch loop shared by both stages.


def run_epochs(*, stage: str, runner: Runner, state: steps.TrainState,
               dataset, epochs: int, batch_size: int, seed: int, rng,
               eval_every: int, eval_batch_size: int, writer: MetricsWriter,
               choose_indices: Callable[[int, steps.TrainState],
                                        tuple[np.ndarray, dict]],
               teacher_variables=None, on_epoch_end=None,
               log_every_steps: int = 50,
               ckpt: ckpt_lib.RunCheckpointer | None = None,
               ckpt_every: int = 1, selector_state=None):
  """Trains for `epochs`; `choose_indices(epoch, state)` gives each epoch's
  sample indices (a selector, or all of them) and extra metrics.

  With `ckpt`, the stage resumes from its latest checkpoint (train state,
  epoch, best/last metrics, and the selector's state through
  `selector_state`, an object with state_dict()/load_state_dict()), and
  saves one every `ckpt_every` epochs and at the end.
  """
  mesh = runner.mesh
  best = {"top1": -1.0}
  last_eval = None
  start_epoch = 0
  if ckpt is not None:
    restored = ckpt.restore(_state_arrays(state))
    if restored is not None:
      arrays, sel_arrays, meta = restored
      state = sharding.replicate(state.replace(**arrays), mesh)
      start_epoch = int(meta["epoch"])
      best = meta.get("best") or best
      last_eval = meta.get("last_eval")
      if selector_state is not None:
        selector_state.load_state_dict(sel_arrays, meta.get("selector", {}))
      writer.rewind(stage, start_epoch)
      logging.info("Resumed %s from epoch %d (%s)", stage, start_epoch,
                   ckpt.directory)
  global_start = time.time()
  bar = progress(range(start_epoch, epochs), desc=stage, unit="epoch",
                 initial=start_epoch, total=epochs)
  for epoch in bar:
    t0 = time.time()
    indices, extra = choose_indices(epoch, state)
    t_select = time.time() - t0
    it = input_pipeline.make_train_iterator(
        dataset, indices, global_batch=batch_size, seed=seed, epoch=epoch,
        process_index=jax.process_index(), process_count=jax.process_count())
    t1 = time.time()
    loss_sum, acc_sum, n_steps, lr = None, None, 0, None
    correct_log = []
    for batch in it:
      gbatch = sharding.host_to_global(batch, mesh)
      state, m = runner.train_step(state, gbatch, rng, teacher_variables)
      loss_sum = m["loss"] if loss_sum is None else loss_sum + m["loss"]
      acc_sum = m["accuracy"] if acc_sum is None else acc_sum + m["accuracy"]
      lr = m.get("lr")
      if on_epoch_end is not None:
        # The global batch's indices: `correct` covers every process's rows.
        correct_log.append((gbatch["index"], m["correct"]))
      n_steps += 1
      if log_every_steps and n_steps % log_every_steps == 0:
        # This log line syncs with the device anyway: check the loss here
        # too, so a diverged run stops within log_every_steps steps.
        step_loss = float(m["loss"])
        logging.info("%s epoch %d step %d loss %.4f", stage, epoch, n_steps,
                     step_loss)
        if not np.isfinite(step_loss):
          _diverged(stage, epoch, state, ckpt)
    if n_steps == 0:
      raise ConfigError(f"config.{stage}.batch_size={batch_size} is larger "
                        f"than the {len(indices)} samples of epoch {epoch}")
    train_loss = float(loss_sum) / n_steps
    train_acc = float(acc_sum) / n_steps
    if not np.isfinite(train_loss):
      # Before anything of this epoch is evaluated, selected or saved.
      _diverged(stage, epoch, state, ckpt)
    t_train = time.time() - t1
    if on_epoch_end is not None:
      on_epoch_end(epoch, correct_log)
    t2 = time.time()
    record = {"stage": stage, "epoch": epoch + 1, "step": int(state.step),
              "train_loss": train_loss, "train_accuracy": train_acc,
              "lr": None if lr is None else float(lr),
              "num_samples": int(len(indices)), "steps": n_steps,
              "seconds_select": t_select, "seconds_train": t_train, **extra}
    if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
      last_eval = evaluate(runner, {"params": state.params,
                                    "batch_stats": state.batch_stats},
                           dataset, eval_batch_size)
      record.update({f"test_{k}": v for k, v in last_eval.items()
                     if k != "count"})
      if last_eval["top1"] > best["top1"]:
        best = {**last_eval, "epoch": epoch + 1}
    record["seconds_eval"] = time.time() - t2
    record["wall_time"] = time.time() - global_start
    writer.write(record)
    if ckpt is not None and ((epoch + 1) % ckpt_every == 0
                             or epoch + 1 == epochs):
      sel_arrays, sel_meta = ({}, {}) if selector_state is None else (
          selector_state.state_dict())
      ckpt.save(epoch + 1, _state_arrays(state), sel_arrays,
                {"stage": stage, "best": best, "last_eval": last_eval,
                 "selector": sel_meta},
                is_best=best.get("epoch") == epoch + 1)
    bar.set_postfix(loss=f"{train_loss:.3f}",
                    top1=f"{(last_eval or {}).get('top1', float('nan')):.3f}")
  if ckpt is not None:
    ckpt.wait()
  return state, last_eval, best


def _diverged(stage: str, epoch: int, state, ckpt) -> None:
  """Raises DivergenceError naming the stage, epoch, step and the last good
  checkpoint (the diverged state is never saved)."""
  good = None
  if ckpt is not None:
    ckpt.wait()
    good = ckpt.latest_epoch()
  raise DivergenceError(
      f"{stage} stage diverged: the training loss became non-finite in "
      f"epoch {epoch + 1} (by step {int(state.step)}); this epoch was not "
      "saved. Last good checkpoint: "
      + (f"{ckpt.directory}/latest/{good}" if good is not None else "none")
      + f". Lower config.{stage}.lr and start again in a new --workdir, or "
      "rerun here to resume from that checkpoint.")


def _state_arrays(state: steps.TrainState) -> dict:
  """The array part of a TrainState (what a checkpoint holds)."""
  return {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "step": state.step}


# ---------------------------------------------------------------------------
# Stage 1: the full-precision teacher.


def _teacher_meta(config, dataset) -> dict:
  """What a teacher checkpoint records of the model, and must match on load."""
  m = config.model
  stem = m.stem
  if stem == "auto":  # as models.build_model resolves it
    stem = "imagenet" if dataset.image_shape[0] >= 64 else "cifar"
  return {"model": m.name, "block": m.block, "stem": stem,
          "shortcut": m.shortcut, "width_mult": m.width_mult,
          "num_classes": int(dataset.num_classes),
          "image_shape": list(dataset.image_shape)}


def teacher_source(config, workdir: str) -> str:
  """The teacher directory the run loads ("" when it trains one).

  WORKDIR/teacher (a finished teacher stage of this run, fine-tuned or
  trained) comes first, then config.teacher.checkpoint. Every process must
  take the same branch: process 0's view decides (the workdir must be
  storage shared by all hosts).
  """
  teacher_dir = os.path.join(workdir, "teacher")
  finished = os.path.exists(os.path.join(teacher_dir, "teacher.json"))
  if bool(sharding.broadcast_from_primary(np.asarray(finished))):
    return teacher_dir
  return config.teacher.checkpoint


def teacher_stage(config, dataset, teacher_model, mesh, workdir, writer,
                  ckpt=None, source: str = ""):
  """Loads, fine-tunes or trains the FP teacher.

  `source` (see teacher_source) is loaded when given; a loaded
  config.teacher.checkpoint is then fine-tuned for
  config.teacher.finetune_epochs epochs (0: used as it is). A trained or
  fine-tuned teacher is saved to WORKDIR/teacher.

  Returns:
    (variables, test metrics, info): info has "pretrained_test_top1" when a
    checkpoint was fine-tuned.
  """
  meta = _teacher_meta(config, dataset)
  like = jax.eval_shape(lambda: models.init_variables(
      teacher_model, dataset.image_shape,
      rngs.key(config.seed, "teacher_init")))
  teacher_dir = os.path.join(workdir, "teacher")
  c = config.teacher
  info = {}
  eval_runner = None
  variables, loaded_meta = None, None
  if source:
    variables, loaded_meta = ckpt_lib.load_teacher(source, like, meta)
    variables = sharding.replicate(variables, mesh)
    eval_runner = Runner(teacher_model, mesh, loss="ce", kd_alpha=0.0,
                         lr_schedule=None)
    result = evaluate(eval_runner, variables, dataset,
                      _eval_batch_size(config))
    logging.info("Loaded teacher from %s: test top-1 %.4f", source,
                 result["top1"])
    if source == teacher_dir or not c.finetune_epochs:
      return variables, result, {
          k: loaded_meta[k] for k in ("pretrained_test_top1",)
          if k in loaded_meta}
    info["pretrained_test_top1"] = result["top1"]
  epochs = c.finetune_epochs if source else c.epochs
  all_idx = np.arange(dataset.num_examples("train"), dtype=np.int64)
  spe = input_pipeline.steps_per_epoch(len(all_idx), c.batch_size)
  tx, schedule = steps.make_optimizer(c, spe, step_size_lr_mult=1.0,
                                      epochs=epochs)
  runner = Runner(teacher_model, mesh, loss="ce", kd_alpha=0.0,
                  lr_schedule=schedule)
  if variables is None:
    variables = models.init_variables(teacher_model, dataset.image_shape,
                                      rngs.key(config.seed, "teacher_init"))
  state = steps.TrainState.create(apply_fn=teacher_model.apply,
                                  params=variables["params"], tx=tx,
                                  batch_stats=variables["batch_stats"])
  state = sharding.replicate(state, mesh)
  state, result, _ = run_epochs(
      stage="teacher", runner=runner, state=state, dataset=dataset,
      epochs=epochs, batch_size=c.batch_size,
      seed=rngs.host_seed(config.seed, "teacher_data"),
      rng=rngs.key(config.seed, "teacher_step"),
      eval_every=max(1, epochs), eval_batch_size=_eval_batch_size(config),
      writer=writer, choose_indices=lambda e, s: (all_idx, {}),
      log_every_steps=config.log_every_steps, ckpt=ckpt,
      ckpt_every=config.checkpoint.every_epochs)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if result is None:
    result = evaluate(runner, variables, dataset, _eval_batch_size(config))
  # Every process calls the save: orbax's save is a collective (its barriers
  # wait for all processes); only process 0 writes the files.
  ckpt_lib.save_teacher(
      teacher_dir, sharding.to_host(variables),
      {**meta, "test_top1": result["top1"], "mean": list(dataset.mean),
       "std": list(dataset.std),
       "normalization": config_lib.normalization_name(config, loaded_meta), **info,
       **({"finetuned_from": os.path.abspath(source),
           "finetune_epochs": epochs} if source else {})})
  return variables, result, info


# ---------------------------------------------------------------------------
# Stage 2: QAT on the coreset.


def check_batch_sizes(config, dataset, teacher_trains: bool) -> None:
  """Refuses, before any work, a batch larger than the data it draws from."""
  n = dataset.num_examples("train")
  if teacher_trains and config.teacher.batch_size > n:
    raise ConfigError(
        f"config.teacher.batch_size={config.teacher.batch_size} is larger "
        f"than the {n} training samples; lower it")
  if config.train.epochs:
    size = schedule_lib.epoch_data_size(config.coreset,
                                        dataset.train_labels())
    if config.train.batch_size > size:
      raise ConfigError(
          f"config.train.batch_size={config.train.batch_size} is larger than "
          f"the coreset ({size} samples = fraction "
          f"{config.coreset.fraction} of {n}); lower the batch size or raise "
          "config.coreset.fraction")


def student_stage(config, dataset, teacher_model, teacher_variables,
                  student_model, mesh, workdir, writer, ckpt=None):
  c = config.train
  labels = dataset.train_labels()
  sel = baselines.get_selector(config.coreset.selector)
  full_size = len(labels)
  size = schedule_lib.epoch_data_size(config.coreset, labels)
  # The LR schedule spans warm-up epochs on the full data and coreset epochs.
  warm = config.coreset.warmup_epochs if sel.mode != "full" else 0
  spe_core = input_pipeline.steps_per_epoch(size, c.batch_size)
  spe_full = input_pipeline.steps_per_epoch(full_size, c.batch_size)
  total_steps = warm * spe_full + (c.epochs - warm) * spe_core
  spe_mean = total_steps / c.epochs
  tx, schedule = steps.make_optimizer(
      c, spe_mean, step_size_lr_mult=c.step_size_lr_mult)

  # Student = teacher weights + LSQ steps calibrated on a training batch.
  sample = _first_train_batch(dataset, min(c.batch_size, 256),
                              rngs.host_seed(config.seed, "calibration"))
  student_vars = models.student_from_teacher(
      student_model, sharding.to_host(teacher_variables), sample, config.seed)
  state = steps.TrainState.create(apply_fn=student_model.apply,
                                  params=student_vars["params"], tx=tx,
                                  batch_stats=student_vars["batch_stats"])
  state = sharding.replicate(state, mesh)
  runner = Runner(student_model, mesh, loss=c.loss, kd_alpha=c.kd_alpha,
                  lr_schedule=schedule, teacher_model=teacher_model)
  initial = evaluate(runner, {"params": state.params,
                              "batch_stats": state.batch_stats}, dataset,
                     _eval_batch_size(config))
  logging.info("Student (%s) at init: test top-1 %.4f",
               quant.from_config(config.quant).name, initial["top1"])
  schedule_sel = schedule_lib.CoresetSchedule(
      config, dataset, runner.score_fn,
      lambda v, x: teacher_model.apply(v, x, train=False), teacher_variables,
      mesh, workdir, writer,
      score_batch_size=(config.coreset.score_batch_size
                        or _eval_batch_size(config)),
      selection_seed=lambda epoch: rngs.host_seed(config.seed, "selection",
                                                  epoch))
  state, last, best = run_epochs(
      stage="train", runner=runner, state=state, dataset=dataset,
      epochs=c.epochs, batch_size=c.batch_size,
      seed=rngs.host_seed(config.seed, "student_data"),
      rng=rngs.key(config.seed, "student_step"), eval_every=c.eval_every,
      eval_batch_size=_eval_batch_size(config), writer=writer,
      choose_indices=schedule_sel,
      teacher_variables=teacher_variables if c.loss != "ce" else None,
      on_epoch_end=(schedule_sel.on_epoch_end
                    if schedule_sel.tracker is not None else None),
      log_every_steps=config.log_every_steps, ckpt=ckpt,
      ckpt_every=config.checkpoint.every_epochs, selector_state=schedule_sel)
  return state, initial, last, best


# ---------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs the teacher and the QAT stage; returns the summary dict."""
  config_lib.validate(config)
  workdir_lib.check(workdir)
  env.check_configured()  # process set-up belongs to the entry points
  mesh = sharding.make_mesh()
  n_dev = mesh.devices.size
  for field in ("teacher.batch_size", "train.batch_size"):
    _check_batch(config[field.split(".")[0]][field.split(".")[1]], field,
                 n_dev)
  _check_batch(_eval_batch_size(config), "train.eval_batch_size", n_dev)
  if config.coreset.score_batch_size:
    _check_batch(config.coreset.score_batch_size, "coreset.score_batch_size",
                 n_dev)
  try:
    dataset = datasets.load_dataset(config_lib.data_options(config.data))
  except ValueError as e:  # the data module names the field already
    raise ConfigError(str(e)) from None
  qc = quant.from_config(config.quant)
  source = teacher_source(config, workdir)
  teacher_meta = ckpt_lib.read_teacher_meta(source) if source else None
  if teacher_meta is not None:  # refuse another model before any work
    ckpt_lib.check_teacher_meta(source, teacher_meta,
                                _teacher_meta(config, dataset))
  dataset = config_lib.resolve_normalization(dataset, config.data.normalization,
                                  teacher_meta, source)
  check_batch_sizes(config, dataset, teacher_trains=not source or (
      source == config.teacher.checkpoint and config.teacher.finetune_epochs))
  make = functools.partial(models.model_from_config, config,
                           dataset.num_classes, dataset.image_shape[0])
  teacher_model, student_model = make(qc.as_float()), make(qc)
  ckpts = {stage: ckpt_lib.RunCheckpointer(
      os.path.join(workdir, "checkpoints", stage), keep=config.checkpoint.keep,
      fingerprint=ckpt_lib.config_fingerprint(config, stage))
           for stage in ("teacher", "train")}
  for c in ckpts.values():  # refuse before writing anything
    c.check_compatible()
  with workdir_lib.Lock(workdir, held=sharding.is_primary()):
    if sharding.is_primary():
      workdir_lib.record_config(workdir, config)
    try:
      summary = _run_stages(config, workdir, dataset, qc, teacher_model,
                            student_model, mesh, ckpts, source)
    finally:  # pending asynchronous saves finish even when a stage fails
      for c in ckpts.values():
        c.close()
  return summary


def _run_stages(config, workdir, dataset, qc, teacher_model, student_model,
                mesh, ckpts, source) -> dict[str, Any]:
  """The teacher stage, then QAT; writes metrics and the summary."""
  logging.info("Devices: %d (%s), processes: %d", mesh.devices.size,
               jax.devices()[0].platform, jax.process_count())
  t_start = time.time()
  with MetricsWriter(workdir) as writer:
    t0 = time.time()
    teacher_vars, teacher_eval, teacher_info = teacher_stage(
        config, dataset, teacher_model, mesh, workdir, writer,
        ckpts["teacher"], source)
    t_teacher = time.time() - t0
    logging.info("Teacher test top-1: %.4f", teacher_eval["top1"])
    summary = {
        "dataset": dataset.name, "model": config.model.name,
        "bits": qc.name, "selector": config.coreset.selector,
        "fraction": config.coreset.fraction,
        "teacher_test_top1": teacher_eval["top1"], **{
            f"teacher_{k}": v for k, v in teacher_info.items()},
        "seconds_teacher": t_teacher}
    if config.train.epochs:  # 0: evaluate the teacher only
      t0 = time.time()
      _, initial, last, best = student_stage(
          config, dataset, teacher_model, teacher_vars, student_model, mesh,
          workdir, writer, ckpts["train"])
      summary.update({
          "student_init_test_top1": initial["top1"],
          "student_final_test_top1": last["top1"] if last else None,
          "student_final_test_top5": last["top5"] if last else None,
          "student_best_test_top1": best.get("top1"),
          "student_best_epoch": best.get("epoch"),
          "seconds_student": time.time() - t0})
    summary["seconds_total"] = time.time() - t_start
    final = summary.get("student_final_test_top1")
    if final is not None and final <= 1.5 / dataset.num_classes:
      summary["warning"] = (
          f"the student ends at chance level (test top-1 {final:.4f}, "
          f"{dataset.num_classes} classes): check config.train.lr and the "
          "training loss in metrics.jsonl")
      logging.warning("%s", summary["warning"])
    writer.write_summary(summary)
  return summary
