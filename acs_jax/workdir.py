"""The workdir of one run: checked before any work, held by one process.

* `check(workdir)`: refuses a path that cannot hold a run, writing nothing.
* `Lock(workdir)`: an exclusive `flock` on WORKDIR/.lock for the life of the
  run. A second process on the same workdir is refused at once; the kernel
  drops the lock when its holder dies, so a run killed by SIGKILL never
  leaves it stuck and the rerun resumes.
* `record_config(workdir, config)`: config.json is the config of the run that
  writes the checkpoints now; every start is appended to configs.jsonl, so a
  resumed run with other allowed values (e.g. a new eval batch size) is on
  record too.
"""
from __future__ import annotations

import fcntl
import json
import os
import time

from acs_jax import config_lib


def check(workdir: str) -> None:
  """Refuses (ConfigError) a workdir that cannot hold a run."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):  # the first folder that exists
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise config_lib.ConfigError(
        f"--workdir={workdir!r}: {path} is a file, not a folder; choose "
        "another --workdir")
  if not os.access(path, os.W_OK | os.X_OK):
    raise config_lib.ConfigError(
        f"--workdir={workdir!r}: {path} is not writable; choose another "
        "--workdir")


class Lock:
  """Exclusive lock of a workdir (one per process; a no-op when `held`=False,
  e.g. on hosts other than the primary)."""

  def __init__(self, workdir: str, held: bool = True):
    self.path = os.path.join(workdir, ".lock")
    self.workdir = workdir
    self.held = held
    self._file = None

  def __enter__(self) -> "Lock":
    os.makedirs(self.workdir, exist_ok=True)
    if not self.held:
      return self
    f = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or "another process"
      f.close()
      raise config_lib.ConfigError(
          f"--workdir={self.workdir!r} is in use by {owner}: one workdir "
          "holds one run at a time. Wait for it to finish, or choose another "
          "--workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def record_config(workdir: str, config) -> None:
  """Writes config.json (this run's config) and appends it to configs.jsonl."""
  text = config.to_json_best_effort(sort_keys=True)
  with open(os.path.join(workdir, "configs.jsonl"), "a") as f:
    f.write(json.dumps({"time": time.time(), "config": json.loads(text)})
            + "\n")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
