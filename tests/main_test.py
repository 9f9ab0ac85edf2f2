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


def test_bad_flag_is_one_message_exit_2(tmp_path):
  # The command line end to end, once: absl's own error (a value that is not
  # a float) comes out as one line with exit status 2, before any work.
  r = _main("--config=configs/quickstart.py", "--config.train.lr=abc",
            f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith(
      "error: flag --config.train.lr=abc: could not convert string to float"
  ), r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags,message", [
    (("--config=configs/nope.py",),
     "--config=configs/nope.py: no such config file"),
    (("--config=configs/quickstart.py", "--config.train.nonexistent=1"),
     "--config.train.nonexistent: config.train has no field "
     "'nonexistent'; its fields: b1, b2, batch_size,"),
    (("--config=configs/quickstart.py", "--config.trian.lr=1"),
     "--config.trian.lr: config has no field 'trian'; its fields: "
     "checkpoint, coreset, data,"),
])
def test_bad_config_flags_name_the_field(monkeypatch, flags, message):
  # What parse_flags prints after "error: " for the flags absl cannot explain
  # (the same function, in-process: no interpreter start per case).
  from acs_jax import main  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(REPO)
  text = main._flag_error(["main", *flags, "--workdir=w"],  # pylint: disable=protected-access
                          KeyError("absl's message"))
  assert text.startswith(message), text


def test_workdir_that_is_a_file_is_refused(tmp_path):
  f = tmp_path / "file"
  f.write_text("keep me")
  for workdir in (f, f / "sub"):
    with pytest.raises(config_lib.ConfigError,
                       match=r"--workdir=.*is a file, not a folder"):
      train.train_and_evaluate(tiny_config(), str(workdir))
  assert f.read_text() == "keep me"
