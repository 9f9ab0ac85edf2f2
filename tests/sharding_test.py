"""Data parallelism on 8 fake CPU devices equals one device.

The train step as train.Runner jits it (state replicated, batch split over
"data"), the scoring + ACS selection, the no-recompile guarantee and the
output shardings, plus the host helpers of acs_jax.sharding and the launch
scripts. The multi-process (jax.distributed) run is in multiprocess_test.py.
"""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from acs_jax import config_lib, models, quant, sharding, steps, train
from acs_jax.coreset import scores as scores_lib
from acs_jax.coreset import selector as selector_lib
from acs_jax.data import datasets, input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4
BATCH = 16  # 2 rows per device on 8 devices


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
  """Fewer XLA passes: this module compiles each program for 2 meshes."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def meshes():
  assert jax.device_count() == 8
  return {"eight": sharding.make_mesh(), "one": sharding.make_mesh(
      jax.devices()[:1])}


@pytest.fixture(scope="module")
def setup():
  """A W2/A4 tiny ResNet student (from its FP teacher), KD, SGD+momentum."""
  student = models.build_model(
      "resnet_tiny", num_classes=NUM_CLASSES, image_size=8,
      quant=quant.QuantConfig(weight_bits=2, act_bits=4))
  teacher = models.build_model("resnet_tiny", num_classes=NUM_CLASSES,
                               image_size=8, quant=quant.QuantConfig())
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3 * BATCH, 8, 8, 3)).astype(np.float32)
  t_vars = models.init_variables(teacher, (8, 8, 3), seed=1)
  s_vars = models.student_from_teacher(student, t_vars, images[:8], seed=0)
  c = config_lib.optim_config(epochs=2, lr=0.05, momentum=0.9, nesterov=True,
                              weight_decay=5e-4, schedule="cosine")
  tx, schedule = steps.make_optimizer(c, 4)
  batches = [{"image": images[i * BATCH:(i + 1) * BATCH],
              "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
              "index": np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.int64)}
             for i in range(3)]
  return dict(student=student, teacher=teacher, t_vars=t_vars,
              s_vars=jax.tree.map(np.asarray, s_vars), tx=tx,
              schedule=schedule, batches=batches)


def _runner_and_state(setup, mesh):
  runner = train.Runner(setup["student"], mesh, loss="kd", kd_alpha=0.5,
                        lr_schedule=setup["schedule"],
                        teacher_model=setup["teacher"])
  v = setup["s_vars"]
  state = sharding.replicate(steps.TrainState.create(
      apply_fn=setup["student"].apply, params=v["params"], tx=setup["tx"],
      batch_stats=v["batch_stats"]), mesh)
  teacher_vars = sharding.replicate(setup["t_vars"], mesh)
  return runner, state, teacher_vars


def _run_steps(setup, mesh, n):
  runner, state, t_vars = _runner_and_state(setup, mesh)
  rng = jax.random.key(0)
  losses, batch_specs = [], []
  for batch in setup["batches"][:n]:
    gbatch = sharding.host_to_global(batch, mesh)
    batch_specs.append({k: v.sharding.spec for k, v in gbatch.items()})
    state, m = runner.train_step(state, gbatch, rng, t_vars)
    losses.append(float(m["loss"]))
  return runner, state, losses, batch_specs


@pytest.fixture(scope="module")
def stepped(setup, meshes):
  return {name: _run_steps(setup, mesh, 3) for name, mesh in meshes.items()}


def test_sharded_step_equals_single_device(stepped):
  _, s8, loss8, _ = stepped["eight"]
  _, s1, loss1, _ = stepped["one"]
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(loss8))
  host8, host1 = sharding.to_host((s8.params, s8.batch_stats)), \
      sharding.to_host((s1.params, s1.batch_stats))
  flat8 = jax.tree_util.tree_flatten_with_path(host8)[0]
  flat1 = jax.tree.leaves(host1)
  assert len(flat8) == len(flat1)
  for (path, a), b in zip(flat8, flat1):
    # Summation order differs (per-device partial sums + all-reduce); STE
    # rounding can amplify that on a step-size boundary, hence atol.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))
  # Something did change: the comparison is not between two initial states.
  assert int(s8.step) == int(s1.step) == 3


def test_state_stays_replicated_and_batch_is_split(stepped, meshes):
  _, state, _, batch_specs = stepped["eight"]
  mesh = meshes["eight"]
  for leaf in jax.tree.leaves((state.params, state.batch_stats,
                               state.opt_state, state.step)):
    assert leaf.sharding.spec == P(), leaf.sharding
    assert leaf.sharding.mesh.devices.size == 8
    assert leaf.sharding.is_fully_replicated
  for specs in batch_specs:
    assert specs == {"image": P("data"), "label": P("data"),
                     "index": P("data")}
  g = sharding.host_to_global({"image": np.zeros((BATCH, 8, 8, 3)),
                               "index": np.arange(BATCH)}, mesh)
  assert g["image"].dtype == jnp.float32 and g["index"].dtype == jnp.int32
  assert {s.data.shape for s in g["image"].addressable_shards} == {
      (BATCH // 8, 8, 8, 3)}
  rows = sorted(int(s.data[0]) for s in g["index"].addressable_shards)
  assert rows == list(range(0, BATCH, BATCH // 8))


def test_step_compiles_once(setup, stepped):
  """Three steps on different data (and a donated, re-fed state): 1 trace."""
  runner8, _, _, _ = stepped["eight"]
  runner1, _, _, _ = stepped["one"]
  assert runner8.train_step._cache_size() == 1  # pylint: disable=protected-access
  assert runner1.train_step._cache_size() == 1  # pylint: disable=protected-access


def _tiny_dataset():
  c = config_lib.get_base_config()
  c.data.update(source="synthetic", name="synthetic", num_train=72,
                num_test=8, num_classes=NUM_CLASSES)
  return datasets.load_dataset(config_lib.data_options(c.data))


def _score_and_select(setup, mesh, dataset, score_fn, teacher_apply):
  n = dataset.num_examples("train")
  batches = lambda: input_pipeline.make_eval_iterator(  # noqa: E731
      dataset, "train", batch_size=BATCH)  # 72 = 4.5 batches: padded tail
  t_vars = sharding.replicate(setup["t_vars"], mesh)
  probs = scores_lib.compute_teacher_probs(teacher_apply, t_vars, batches(),
                                           n, mesh)
  s_vars = sharding.replicate(setup["s_vars"], mesh)
  scores = scores_lib.score_dataset(score_fn, s_vars, batches(), n, mesh,
                                    teacher_probs=probs)
  labels = np.asarray(dataset.arrays("train")[1])
  idx, _ = selector_lib.acs_select(scores["evs"], scores["ds"], labels,
                                   epoch=1, total_epochs=4, fraction=0.5,
                                   schedule="cosine", balance=True)
  return probs, scores, idx


def test_selection_identical_on_one_and_eight_devices(setup, meshes):
  dataset = _tiny_dataset()
  student, teacher = setup["student"], setup["teacher"]
  # One score_fn / teacher fn for both meshes, as a run reuses them.
  score_fn = scores_lib.make_score_fn(
      lambda v, x: student.apply(v, x, train=False, features=True))
  teacher_apply = functools.partial(teacher.apply, train=False)
  p8, s8, idx8 = _score_and_select(setup, meshes["eight"], dataset, score_fn,
                                   teacher_apply)
  p1, s1, idx1 = _score_and_select(setup, meshes["one"], dataset, score_fn,
                                   teacher_apply)
  np.testing.assert_allclose(p8, p1, rtol=1e-5, atol=1e-6)
  for k in ("evs", "ds"):
    np.testing.assert_allclose(s8[k], s1[k], rtol=1e-5, atol=1e-6)
  assert len(idx8) == 36
  np.testing.assert_array_equal(idx8, idx1)


# ---------------------------------------------------------------------------
# Host helpers.


def test_replicate_and_to_host_round_trip(meshes):
  mesh = meshes["eight"]
  local = jax.jit(lambda: jnp.arange(6.0).reshape(2, 3))()  # process-local
  tree = {"a": local, "b": np.ones((3,), np.float64), "step": 0}
  out = sharding.replicate(tree, mesh)
  for leaf in jax.tree.leaves(out):
    assert leaf.sharding.spec == P() and len(leaf.devices()) == 8
  assert out["b"].dtype == jnp.float32  # x64 off: 32-bit on device
  back = sharding.to_host(out)
  np.testing.assert_array_equal(back["a"], np.arange(6.0).reshape(2, 3))
  assert isinstance(back["step"], np.ndarray) and back["step"] == 0
  # A sharded array comes back whole.
  g = sharding.host_to_global({"x": np.arange(16)}, mesh)
  np.testing.assert_array_equal(sharding.to_host(g)["x"], np.arange(16))
  # Single process: nothing to exchange.
  assert sharding.is_primary()
  assert int(sharding.broadcast_from_primary(np.int32(7))) == 7
  sharding.sync("noop with one process")


def test_check_batch():
  sharding.check_batch(32, 8)
  sharding.check_batch(3, 1)
  with pytest.raises(ValueError, match=r"config.train.batch_size=12 must be a "
                     r"multiple of the number of devices \(8\); valid "
                     r"values: 8, 16, 32"):
    sharding.check_batch(12, 8, "config.train.batch_size")


@pytest.mark.parametrize("coreset_size", [33, 40, 64, 71])
def test_every_host_runs_the_same_steps(coreset_size):
  """Whatever the coreset size, each of 4 hosts gets the same number of
  batches of global_batch/4 rows, and together they cover each global batch
  exactly (no sample twice, the remainder dropped for all)."""
  dataset = _tiny_dataset()
  idx = np.random.default_rng(coreset_size).choice(72, coreset_size,
                                                   replace=False)
  per_host = []
  for p in range(4):
    it = input_pipeline.make_train_iterator(
        dataset, idx, global_batch=BATCH, seed=3, epoch=1, process_index=p,
        process_count=4, augment=False)
    per_host.append([b["index"] for b in it])
    assert len(it) == len(per_host[-1]) == coreset_size // BATCH
  for step_rows in zip(*per_host):
    assert all(len(r) == BATCH // 4 for r in step_rows)
    together = np.concatenate(step_rows)
    assert len(np.unique(together)) == BATCH
    assert np.isin(together, idx).all()


# ---------------------------------------------------------------------------
# Launch scripts.

_SCRIPTS = ("launch/tpu_pod.sh", "launch/gpu_slurm.sbatch",
            "launch/local_devices.sh")


@pytest.mark.parametrize("script", _SCRIPTS)
def test_launch_script_syntax(script):
  path = os.path.join(ROOT, script)
  assert os.path.exists(path), path
  p = subprocess.run(["bash", "-n", path], capture_output=True, text=True,
                     check=False)
  assert p.returncode == 0, p.stderr
  text = open(path).read()
  assert "acs_jax.main" in text
  if script != "launch/local_devices.sh":
    assert "ACS_JAX_DISTRIBUTED=1" in text


def test_local_devices_script(tmp_path):
  script = os.path.join(ROOT, "launch/local_devices.sh")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHON"] = sys.executable
  # --dry-run prints the exact command and environment, runs nothing.
  p = subprocess.run(
      ["bash", script, "2", "--dry-run", "--config=configs/quickstart.py",
       f"--workdir={tmp_path}/w"], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=900, check=False)
  assert p.returncode == 0, p.stderr
  assert "--xla_force_host_platform_device_count=2" in p.stdout
  assert "JAX_PLATFORMS=cpu" in p.stdout
  assert "-m acs_jax.main --config=configs/quickstart.py" in p.stdout
  assert not os.path.exists(tmp_path / "w")
  # A real (cheap) invocation: the 2 devices exist in the launched process.
  p = subprocess.run(["bash", script, "2", "--check-devices"], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=900,
                     check=False)
  assert p.returncode == 0, p.stderr
  assert "2 cpu devices" in p.stdout
  # Bad N: a clear message, non-zero.
  p = subprocess.run(["bash", script, "zero"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900, check=False)
  assert p.returncode != 0 and "N" in p.stderr
