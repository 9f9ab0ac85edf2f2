"""Test-session setup: CPU only, 8 fake devices, TensorFlow kept off any GPU.

Everything here must happen before jax initialises its backends, so it runs at
import time of this conftest (pytest imports it before any test module).

The tests share one persistent XLA compilation cache, a temporary directory
made by the first process that imports this file (pytest's, or under
pytest-xdist the controller, whose environment the workers and every
subprocess a test starts inherit) and removed when that process exits. The
end-to-end tests compile the same programs many times over (each run builds
new jitted callables, which jax's in-memory cache does not share); the
persistent cache is keyed on the program, the flags and the versions, so a
hit returns the executable a fresh compile would have built. A user's own
JAX_COMPILATION_CACHE_DIR is respected.
"""
import atexit
import fcntl
import json
import os
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8").strip()

# Files the test processes share (pytest-xdist's workers inherit the path).
if "ACS_JAX_TESTS_SHARED_DIR" not in os.environ:
  _shared_dir = tempfile.mkdtemp(prefix="acs_jax_tests_shared_")
  os.environ["ACS_JAX_TESTS_SHARED_DIR"] = _shared_dir
  atexit.register(shutil.rmtree, _shared_dir, ignore_errors=True)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="acs_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests' programs are tiny, so compiling them costs far more than running
# them: XLA's optimisation passes are off (a third less time per compile), in
# this process and every subprocess a test starts. Their numerics are checked
# against the same references either way; JAX_DISABLE_MOST_OPTIMIZATIONS=0
# runs the suite with the optimised compiles a user's run gets (the real
# pretrained ResNet-20 test always does).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

from acs_jax import env  # noqa: E402  (imports no jax)

env.set_xla_defaults()

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402

env.hide_gpus_from_tensorflow()
env.configure_jax()


@pytest.fixture(scope="session", autouse=True)
def _eight_cpu_devices():
  assert jax.default_backend() == "cpu"
  assert jax.device_count() == 8, jax.devices()
  yield


@pytest.fixture(scope="session")
def tiny_run():
  """(workdir, summary) of one finished run of `tiny_config()`, shared by
  every test module and pytest-xdist worker: the first to ask trains it
  (under a file lock, so the others wait for it). Read-only: a test that
  changes a run copies it first."""
  from acs_jax import train  # pylint: disable=g-import-not-at-top
  from tiny_configs import tiny_config  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(os.environ["ACS_JAX_TESTS_SHARED_DIR"], "tiny_run")
  summary_path = os.path.join(workdir, "summary.json")
  with open(workdir + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(summary_path):
      shutil.rmtree(workdir, ignore_errors=True)  # a build that was stopped
      train.train_and_evaluate(tiny_config(), workdir)
  with open(summary_path) as f:
    return workdir, json.load(f)


# Under `pytest -n 2`, whole files go to one worker each (`--dist loadfile`
# in pyproject.toml, so a module's fixtures are built once, not once per
# worker), handed out in this order: the slowest first (measured with
# `--durations=0`), so no worker is left alone with a long file at the end.
SLOWEST_FIRST = (
    "export_test.py", "tools_test.py", "models_test.py", "pretrained_test.py",
    "train_test.py", "workdir_test.py", "checkpoint_test.py",
    "imagenet_test.py", "multiprocess_test.py", "sweep_test.py",
    "convert_test.py", "bench_test.py", "sharding_test.py", "quant_test.py",
    "input_pipeline_test.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
