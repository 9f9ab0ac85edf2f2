"""Process set-up: the XLA:CPU flags acs_jax sets by default."""
import os

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
  # conftest sets them before jax starts, as the entry points do.
  for flag in env.default_xla_flags():
    assert flag in os.environ["XLA_FLAGS"].split()
