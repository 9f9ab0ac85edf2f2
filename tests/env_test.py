"""Process set-up: the XLA:CPU flags acs_jax sets by default, and TensorFlow
imported only when tf.data is used."""
import os
import subprocess
import sys

import pytest

from acs_jax import env

FLAG = "xla_cpu_experimental_ynn_fusion_type"


@pytest.fixture
def jaxlib_0_10(monkeypatch):
  monkeypatch.setattr(env, "_jaxlib_version", lambda: (0, 10, 2))
  monkeypatch.delenv(env.XLA_DEFAULTS_ENV, raising=False)


def test_defaults_are_appended_to_the_users_flags(jaxlib_0_10, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  env.set_xla_defaults()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags == ["--xla_force_host_platform_device_count=2",
                   f"--{FLAG}=-individual_convolution"]
  env.set_xla_defaults()  # idempotent
  assert os.environ["XLA_FLAGS"].split() == flags
  assert env.without_default_xla_flags(os.environ["XLA_FLAGS"]) == (
      "--xla_force_host_platform_device_count=2")


def test_a_flag_the_user_sets_is_kept(jaxlib_0_10, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{FLAG}=default")
  env.set_xla_defaults()
  assert os.environ["XLA_FLAGS"] == f"--{FLAG}=default"


def test_opt_out_and_unknown_jaxlib_add_nothing(jaxlib_0_10, monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv(env.XLA_DEFAULTS_ENV, "0")
  env.set_xla_defaults()
  assert "XLA_FLAGS" not in os.environ
  monkeypatch.delenv(env.XLA_DEFAULTS_ENV)
  # XLA aborts on flags it does not know: other jaxlib versions get none.
  for version in [(0, 9, 0), (0, 11, 0), None]:
    monkeypatch.setattr(env, "_jaxlib_version", lambda v=version: v)
    assert env.default_xla_flags() == []
    env.set_xla_defaults()
    assert "XLA_FLAGS" not in os.environ


def test_this_test_session_runs_with_the_defaults():
  # conftest sets them before jax starts, as the entry points do: the flags
  # of the installed jaxlib (none outside the measured versions) are there.
  low, high = env._XLA_CPU_DEFAULTS_JAXLIB
  version = env._jaxlib_version()
  want = ([f"--{k}={v}" for k, v in env.XLA_CPU_DEFAULTS.items()]
          if version is not None and low <= version < high
          and os.environ.get(env.XLA_DEFAULTS_ENV, "1") != "0" else [])
  assert env.default_xla_flags() == want
  flags = os.environ["XLA_FLAGS"].split()
  assert all(flag in flags for flag in want), (want, flags)


def test_a_run_without_the_process_setup_is_refused():
  import jax  # pylint: disable=g-import-not-at-top
  env.check_configured()  # conftest configured this session
  jax.config.update("jax_threefry_partitionable", True)
  try:
    with pytest.raises(RuntimeError, match="call acs_jax.env.configure_jax"):
      env.check_configured()
  finally:
    env.configure_jax()
  env.check_configured()


def test_tensorflow_is_imported_only_when_tf_data_runs_and_then_hidden():
  # A fresh interpreter: the entry points' modules import no TensorFlow (it
  # costs seconds); the first tf.data use imports it with the accelerators
  # hidden, once, and without Keras.
  code = """
import sys
from acs_jax import bench, env, sweep, train
from acs_jax.export import tool
from acs_jax.pretrained import convert
assert "tensorflow" not in sys.modules, "imported at module level"
from acs_jax.data import input_pipeline
assert "tensorflow" not in sys.modules
assert env.hide_gpus_from_tensorflow.cache_info().currsize == 0
assert input_pipeline.tf.range(3).shape == (3,)
assert env.hide_gpus_from_tensorflow.cache_info().currsize == 1
assert env.hide_gpus_from_tensorflow() is sys.modules["tensorflow"]
assert env.hide_gpus_from_tensorflow.cache_info().misses == 1
# Keras (and scikit-learn behind it) is not imported with TensorFlow ...
assert not [m for m in sys.modules if m.startswith(("keras", "sklearn"))]
assert sys.modules.get("keras.src.optimizers", 0) == 0  # (no block left)
# ... and still loads when asked for.
assert input_pipeline.tf.keras.optimizers.SGD is not None
import keras.src.optimizers
print("ok")
"""
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, check=False,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
