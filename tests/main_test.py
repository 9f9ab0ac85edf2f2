"""The entry point: a bad flag or workdir is one message with exit status 2."""
import os
import subprocess
import sys

import pytest

from acs_jax import config_lib, train
from tiny_configs import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*flags):
  return subprocess.run(
      [sys.executable, "-m", "acs_jax.main", *flags], cwd=REPO,
      capture_output=True, text=True, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("flags,message", [
    (("--config=configs/nope.py",),
     "error: --config=configs/nope.py: no such config file"),
    (("--config=configs/quickstart.py", "--config.train.nonexistent=1"),
     "error: --config.train.nonexistent: config.train has no field "
     "'nonexistent'; its fields: b1, b2, batch_size,"),
    (("--config=configs/quickstart.py", "--config.trian.lr=1"),
     "error: --config.trian.lr: config has no field 'trian'; its fields: "
     "checkpoint, coreset, data,"),
    (("--config=configs/quickstart.py", "--config.train.lr=abc"),
     "error: flag --config.train.lr=abc: could not convert string to float"),
])
def test_bad_flags_are_one_message_exit_2(tmp_path, flags, message):
  r = _main(*flags, f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
  f = tmp_path / "file"
  f.write_text("keep me")
  for workdir in (f, f / "sub"):
    with pytest.raises(config_lib.ConfigError,
                       match=r"--workdir=.*is a file, not a folder"):
      train.train_and_evaluate(tiny_config(), str(workdir))
  assert f.read_text() == "keep me"
