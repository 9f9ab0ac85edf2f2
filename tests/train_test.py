"""Training pipeline: losses, optimiser groups, end-to-end run, bad configs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acs_jax import config_lib, steps, train
from tiny_configs import tiny_config


# ---------------------------------------------------------------------------
# Losses and optimiser.


def test_kd_loss_matches_float64_reference():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(6, 5)) * 4
  t = rng.normal(size=(6, 5)) * 4
  p_t = np.exp(t - t.max(1, keepdims=True))
  p_t /= p_t.sum(1, keepdims=True)
  log_p_s = s - s.max(1, keepdims=True)
  log_p_s -= np.log(np.exp(log_p_s).sum(1, keepdims=True))
  ref = -(p_t * log_p_s).sum(1)
  got = steps.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(p_t,
                                                               jnp.float32))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  labels = rng.integers(0, 5, size=6)
  ce_ref = -log_p_s[np.arange(6), labels]
  mixed = steps.combined_loss("kd+ce", jnp.asarray(s, jnp.float32), labels,
                              jnp.asarray(p_t, jnp.float32), kd_alpha=0.3)
  np.testing.assert_allclose(mixed, 0.3 * ref + 0.7 * ce_ref, rtol=1e-5)


def _opt_config(**kw):
  return config_lib.optim_config(**{"epochs": 2, "lr": 0.1, "momentum": 0.0,
                                    "nesterov": False, "weight_decay": 0.01,
                                    "schedule": "constant", **kw})


def test_parameter_groups_lr_and_weight_decay():
  params = {"conv": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)},
            "act": {"step": jnp.ones(())},
            "qconv": {"kernel": jnp.ones(3), "w_step": jnp.ones(())},
            "bn": {"scale": jnp.ones(2)}}
  tx, _ = steps.make_optimizer(_opt_config(), 10, step_size_lr_mult=0.1)
  grads = jax.tree.map(jnp.ones_like, params)
  upd, _ = tx.update(grads, tx.init(params), params)
  # kernels: -lr * (g + wd * w); other main params: -lr * g; steps: -lr/10 g.
  np.testing.assert_allclose(upd["conv"]["kernel"], -0.1 * (1 + 0.01 * 2.0))
  np.testing.assert_allclose(upd["qconv"]["kernel"], -0.1 * (1 + 0.01))
  np.testing.assert_allclose(upd["conv"]["bias"], -0.1)
  np.testing.assert_allclose(upd["bn"]["scale"], -0.1)
  np.testing.assert_allclose(upd["act"]["step"], -0.01, rtol=1e-6)
  np.testing.assert_allclose(upd["qconv"]["w_step"], -0.01, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizers_build_and_step(optimizer):
  params = {"k": {"kernel": jnp.ones(3)}}
  tx, _ = steps.make_optimizer(_opt_config(optimizer=optimizer, momentum=0.9,
                                           nesterov=True), 5)
  upd, _ = tx.update({"k": {"kernel": jnp.ones(3)}}, tx.init(params), params)
  assert np.all(np.asarray(upd["k"]["kernel"]) < 0)


def test_lr_schedules_per_step():
  spe = 10
  lin = steps.make_lr_schedule(_opt_config(schedule="linear", epochs=4), spe)
  np.testing.assert_allclose([lin(0), lin(20), lin(40)], [0.1, 0.05, 0.0],
                             atol=1e-7)
  cos = steps.make_lr_schedule(_opt_config(schedule="cosine", epochs=4), spe)
  np.testing.assert_allclose([cos(0), cos(20), cos(40)], [0.1, 0.05, 0.0],
                             atol=1e-7)
  stp = steps.make_lr_schedule(_opt_config(schedule="step", epochs=4,
                                           step_milestones=(0.5,)), spe)
  np.testing.assert_allclose([stp(19), stp(21)], [0.1, 0.01], rtol=1e-6)
  warm = steps.make_lr_schedule(_opt_config(schedule="linear", epochs=4,
                                            warmup_epochs=1.0), spe)
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(40)],
                             [0.0, 0.05, 0.1, 0.0], atol=1e-7)


def test_eval_step_masks_padding():
  logits = jnp.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
  batch = {"image": logits, "label": jnp.array([0, 2, 2]),
           "mask": jnp.array([True, True, False])}
  out = steps.eval_step(None, batch, apply_fn=lambda v, x, train: x)
  assert float(out["count"]) == 2.0
  assert float(out["top1"]) == 1.0  # the padded row (correct) is ignored
  assert float(out["top5"]) == 2.0


# ---------------------------------------------------------------------------
# End to end.


def test_end_to_end_teacher_selections_metrics(tiny_run):
  workdir, summary = tiny_run  # tiny_config(), trained once (conftest.py)
  # Easy 4-class task: both models well above chance (0.25).
  assert summary["teacher_test_top1"] > 0.8
  assert summary["student_final_test_top1"] > 0.6
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      "metrics.jsonl"))]
  teacher = [r for r in records if r["stage"] == "teacher"]
  student = [r for r in records if r["stage"] == "train"]
  assert len(teacher) == 3 and len(student) == 4
  for r in student:
    for key in ("epoch", "step", "wall_time", "train_loss", "test_top1",
                "test_top5", "lr", "beta", "coreset_size", "seconds_select",
                "seconds_train"):
      assert key in r, key
    assert r["coreset_size"] == 96  # half of each of 4 classes of 48
  # Selections at epochs 0 and 2 (R = 2), beta from the cosine schedule.
  sels = [json.loads(l) for l in open(os.path.join(workdir,
                                                   "selections.jsonl"))]
  assert [s["epoch"] for s in sels] == [0, 2]
  np.testing.assert_allclose([s["beta"] for s in sels],
                             [1.0, np.cos(np.pi * 2 / 8)], rtol=1e-6)
  for s in sels:
    idx = np.load(os.path.join(workdir, "selections",
                               f"selection_epoch{s['epoch']:04d}.npy"))
    assert len(idx) == 96 and np.all(np.diff(idx) > 0)
    assert sorted(s["class_counts"].values()) == [24, 24, 24, 24]
  assert os.listdir(os.path.join(workdir, "tb"))
  assert os.path.exists(os.path.join(workdir, "teacher", "teacher.json"))
  assert summary["student_final_test_top1"] == student[-1]["test_top1"]
  assert summary["teacher_test_top1"] == teacher[-1]["test_top1"]


def test_rerun_loads_the_saved_teacher(tiny_run, tmp_path):
  workdir, summary = tiny_run
  c = tiny_config(**{"train.epochs": 1})
  c.teacher.checkpoint = os.path.join(workdir, "teacher")
  again = train.train_and_evaluate(c, str(tmp_path))
  assert again["teacher_test_top1"] == summary["teacher_test_top1"]
  assert not os.path.exists(os.path.join(tmp_path, "teacher"))
  # A teacher of another architecture is refused, naming the mismatch.
  c.model.block = "official"
  with pytest.raises(ValueError, match="block"):
    train.train_and_evaluate(c, str(tmp_path / "other"))


def test_changing_coreset_size_does_not_recompile(tmp_path):
  from acs_jax import models, quant, sharding  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from acs_jax.metrics import MetricsWriter  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  ds = datasets.load_dataset(config_lib.data_options(c.data))
  model = models.build_model("resnet_tiny", num_classes=4,
                             quant=quant.QuantConfig(weight_bits=2))
  mesh = sharding.make_mesh()
  tx, sched = steps.make_optimizer(c.train, 4)
  v = models.init_variables(model, ds.image_shape, 0)
  state = sharding.replicate(steps.TrainState.create(
      apply_fn=model.apply, params=v["params"], tx=tx,
      batch_stats=v["batch_stats"]), mesh)
  runner = train.Runner(model, mesh, loss="ce", kd_alpha=0.0,
                        lr_schedule=sched)
  sizes = {0: 48, 1: 80, 2: 33}
  with MetricsWriter(str(tmp_path)) as w:
    train.run_epochs(
        stage="train", runner=runner, state=state, dataset=ds, epochs=3,
        batch_size=16, seed=0, rng=jax.random.key(0), eval_every=3,
        eval_batch_size=32, writer=w,
        choose_indices=lambda e, s: (np.arange(sizes[e]), {}))
  assert runner.train_step._cache_size() == 1  # pylint: disable=protected-access
  steps_run = [json.loads(l)["steps"] for l in open(tmp_path /
                                                    "metrics.jsonl")]
  assert steps_run == [3, 5, 2]


# ---------------------------------------------------------------------------
# Bad configs: one message naming the field (and the valid values).


@pytest.mark.parametrize("field,value,match", [
    ("data.source", "csv", r"config\.data\.source.*digits"),
    ("model.name", "vgg16", r"config\.model\.name.*resnet18"),
    ("coreset.selector", "best", r"config\.coreset\.selector.*acs"),
    ("coreset.schedule", "exp", r"config\.coreset\.schedule.*cosine"),
    ("coreset.fraction", 0.0, r"config\.coreset\.fraction.*\(0, 1\]"),
    ("coreset.fraction", 1.5, r"config\.coreset\.fraction"),
    ("quant.bits", "w9", r"config\.quant\.bits.*valid values: 2, 3"),
    ("quant.bits", "w1a1", r"config\.quant\.bits"),
    ("coreset.data_update_epochs", 0, r"config\.coreset\.data_update_epochs"),
    ("train.optimizer", "lamb", r"config\.train\.optimizer.*sgd, adam"),
    ("train.schedule", "poly", r"config\.train\.schedule.*cosine"),
    ("train.loss", "mse", r"config\.train\.loss.*kd"),
    ("data.path", "/nonexistent/x.npz", r"config\.data\.path"),
])
def test_bad_config_values(field, value, match, tmp_path):
  overrides = {field: value}
  if field == "data.path":
    overrides["data.source"] = "npz"
  c = tiny_config(**overrides)
  with pytest.raises(config_lib.ConfigError, match=match):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")  # stopped before any work


def test_teacher_error_exclusion_is_for_acs_and_a_bool(tmp_path):
  c = tiny_config(**{"coreset.selector": "random",
                     "coreset.exclude_teacher_errors": True})
  with pytest.raises(config_lib.ConfigError,
                     match=r"exclude_teacher_errors=True.*only with "
                     r"selector 'acs', not 'random'"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  c = tiny_config()
  with c.ignore_type():
    c.coreset.exclude_teacher_errors = 1
  with pytest.raises(config_lib.ConfigError,
                     match=r"exclude_teacher_errors=1.*True or False"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_batch_larger_than_coreset(tmp_path):
  c = tiny_config(**{"coreset.fraction": 0.05, "train.batch_size": 16})
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.train\.batch_size=16.*coreset"):
    train.train_and_evaluate(c, str(tmp_path))


def test_batch_not_multiple_of_devices(tmp_path):
  c = tiny_config(**{"train.batch_size": 12})
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.train\.batch_size=12.*multiple"):
    train.train_and_evaluate(c, str(tmp_path))


def test_cli_overrides_and_exit_status(tmp_path):
  """The CLI applies --config.a.b overrides and exits non-zero on bad ones."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "acs_jax.main",
         "--config=configs/quickstart.py", f"--workdir={tmp_path}",
         "--config.coreset.fraction=1.5"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                     timeout=900, check=False)
  assert p.returncode == 2, p.stderr[-2000:]
  assert "config.coreset.fraction=1.5" in p.stderr
  assert "(0, 1]" in p.stderr


def test_every_config_file_validates_and_documents_itself():
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  names = sorted(f for f in os.listdir(os.path.join(root, "configs"))
                 if f.endswith(".py"))
  assert {"quickstart.py", "r18_w2.py", "mbv2_w2_cifar100.py",
          "r18_w4a4_imagenet.py"} <= set(names)
  for name in names:
    spec = importlib.util.spec_from_file_location(
        name[:-3], os.path.join(root, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    if config.data.source in ("npz", "image_folder") and not os.path.exists(
        config.data.path):
      config.data.path = root  # the file lives outside the repo
    if config.teacher.finetune_epochs and not config.teacher.checkpoint:
      # A config that fine-tunes a pretrained teacher names it by flag.
      with pytest.raises(config_lib.ConfigError,
                         match=r"needs config\.teacher\.checkpoint"):
        config_lib.validate(config)
      config.teacher.checkpoint = root
    config_lib.validate(config)
    # Every config opens with the command that runs it.
    assert f"--config=configs/{name}" in (mod.__doc__ or ""), name


def test_unknown_tfds_name_is_a_config_error(tmp_path):
  c = tiny_config(**{"data.source": "tfds", "data.name": "cifar11"})
  with pytest.raises(config_lib.ConfigError, match=r"config\.data\.name"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
