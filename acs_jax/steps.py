"""Pure train/eval steps, losses and optimisers (no jit decorators here).

train.py binds the static parts with functools.partial and jits each step
once with shardings; nothing here touches the host.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


LOSSES = ("kd", "ce", "kd+ce")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "linear", "step", "constant")


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BatchNorm statistics."""
  batch_stats: Any = None


# --------------------------------------------------------------------------
# Losses.


def kd_loss(student_logits: jax.Array, teacher_probs: jax.Array) -> jax.Array:
  """Per-sample soft cross-entropy -sum_k p_teacher log softmax(student).

  The official DistributionLoss (temperature 1), averaged by the caller.
  Computed in float32.
  """
  logp = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(teacher_probs.astype(jnp.float32) * logp, axis=-1)


def ce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample cross-entropy with integer labels, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def combined_loss(kind: str, logits, labels, teacher_probs=None,
                  kd_alpha: float = 0.5) -> jax.Array:
  """Per-sample loss: "kd", "ce" or "kd+ce" (kd_alpha*kd + (1-kd_alpha)*ce)."""
  if kind == "ce":
    return ce_loss(logits, labels)
  if kind == "kd":
    return kd_loss(logits, teacher_probs)
  if kind == "kd+ce":
    return (kd_alpha * kd_loss(logits, teacher_probs)
            + (1.0 - kd_alpha) * ce_loss(logits, labels))
  raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")


# --------------------------------------------------------------------------
# Optimiser.


def param_labels(params) -> Any:
  """"step" for LSQ step sizes, "main" for everything else."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  labels = {k: "step" if k[-1] in ("step", "w_step") else "main" for k in flat}
  return flax.traverse_util.unflatten_dict(labels)


def decay_mask(params) -> Any:
  """Weight decay on conv and dense kernels only."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] == "kernel" for k in flat})


def make_lr_schedule(c, steps_per_epoch: int, epochs: int | None = None
                     ) -> optax.Schedule:
  """Per-step schedule over `epochs` (default c.epochs) epochs of
  `steps_per_epoch` steps.

  "linear" decays to zero at the end (the official LambdaLR 1 - t/T, but per
  step), "cosine" to zero, "step" multiplies by c.step_gamma at each of
  c.step_milestones (fractions of training), "constant" stays. An optional
  linear warm-up of c.warmup_epochs comes first.
  """
  epochs = c.epochs if epochs is None else epochs
  total = max(1, int(epochs) * int(steps_per_epoch))
  warmup = int(round(float(c.warmup_epochs) * steps_per_epoch))
  decay_steps = max(1, total - warmup)
  if c.schedule == "linear":
    main = optax.linear_schedule(c.lr, 0.0, decay_steps)
  elif c.schedule == "cosine":
    main = optax.cosine_decay_schedule(c.lr, decay_steps)
  elif c.schedule == "step":
    bounds = {int(round(m * decay_steps)): c.step_gamma
              for m in c.step_milestones}
    main = optax.piecewise_constant_schedule(c.lr, bounds)
  elif c.schedule == "constant":
    main = optax.constant_schedule(c.lr)
  else:
    raise ValueError(f"unknown schedule {c.schedule!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, c.lr, warmup), main], [warmup])


def make_optimizer(c, steps_per_epoch: int, step_size_lr_mult: float = 0.1,
                   epochs: int | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD (Nesterov momentum) or Adam with the official parameter groups.

  LSQ step sizes train at lr * step_size_lr_mult; weight decay (coupled L2,
  added to the gradient as torch's SGD/Adam do) applies to conv/dense
  kernels only.
  """
  schedule = make_lr_schedule(c, steps_per_epoch, epochs)

  def base(lr):
    if c.optimizer == "sgd":
      return optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov)
    if c.optimizer == "adam":
      return optax.adam(lr, b1=c.b1, b2=c.b2)
    raise ValueError(f"unknown optimizer {c.optimizer!r}")

  step_schedule = lambda count: schedule(count) * step_size_lr_mult  # noqa
  tx = optax.chain(
      optax.masked(optax.add_decayed_weights(c.weight_decay), decay_mask),
      optax.multi_transform({"main": base(schedule),
                             "step": base(step_schedule)}, param_labels))
  return tx, schedule


# --------------------------------------------------------------------------
# Steps.


def train_step(state: TrainState, batch: dict, rng: jax.Array,
               teacher_variables: Any = None, *, apply_fn: Callable, loss: str,
               kd_alpha: float = 0.5, teacher_apply_fn: Callable | None = None,
               lr_schedule: optax.Schedule | None = None):
  """One optimisation step on a (global) batch.

  Args:
    state: the student's TrainState.
    batch: {'image' [B,H,W,C], 'label' [B], 'index' [B]}.
    rng: base key of the run; the step's key is fold_in(rng, state.step).
    teacher_variables: the frozen FP teacher's variables (for "kd", "kd+ce").
    apply_fn: the student's Flax `apply`.
    loss: "kd", "ce" or "kd+ce".
    kd_alpha: weight of the KD term in "kd+ce".
    teacher_apply_fn: the teacher's `apply`, run in eval mode on the same
      augmented batch.
    lr_schedule: to report the learning rate of this step.

  Returns:
    (new_state, metrics) with per-batch scalars and per-sample 'correct' [B]
    (for forgetting-event counting).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  teacher_probs = None
  if loss != "ce":
    t_logits = teacher_apply_fn(teacher_variables, batch["image"], train=False)
    teacher_probs = jax.lax.stop_gradient(
        jax.nn.softmax(t_logits.astype(jnp.float32), axis=-1))

  def loss_fn(params):
    logits, updates = apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"], rngs={"dropout": step_rng})
    per_sample = combined_loss(loss, logits, batch["label"], teacher_probs,
                               kd_alpha)
    return jnp.mean(per_sample), (logits, updates["batch_stats"])

  (loss_value, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  correct = jnp.argmax(logits, -1) == batch["label"]
  metrics = {"loss": loss_value, "accuracy": jnp.mean(correct),
             "correct": correct}
  if lr_schedule is not None:
    metrics["lr"] = lr_schedule(state.step)
  return new_state, metrics


def eval_step(variables: Any, batch: dict, *, apply_fn: Callable) -> dict:
  """Masked sums over a padded eval batch: loss, top-1, top-5 and count."""
  logits = apply_fn(variables, batch["image"], train=False)
  mask = batch["mask"].astype(jnp.float32)
  loss = ce_loss(logits, batch["label"])
  k = min(5, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  top1 = (topk[:, 0] == batch["label"]).astype(jnp.float32)
  top5 = jnp.any(topk == batch["label"][:, None], axis=-1).astype(jnp.float32)
  return {"loss": jnp.sum(loss * mask), "top1": jnp.sum(top1 * mask),
          "top5": jnp.sum(top5 * mask), "count": jnp.sum(mask)}
