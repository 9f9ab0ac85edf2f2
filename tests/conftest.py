"""Test-session setup: CPU only, 8 fake devices, TensorFlow kept off any GPU.

Everything here must happen before jax initialises its backends, so it runs at
import time of this conftest (pytest imports it before any test module).
"""
import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8").strip()

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
