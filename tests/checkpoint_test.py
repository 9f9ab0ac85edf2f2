"""Checkpoints: kill-and-resume is bit-exact, bad checkpoints are refused."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from acs_jax import checkpoint as ckpt_lib
from acs_jax import train
from tiny_configs import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))


def resume_config():
  """The suite's shared tiny run (conftest.tiny_run): a checkpoint after
  every epoch, the last 2 kept."""
  c = tiny_config()
  assert (c.checkpoint.every_epochs, c.checkpoint.keep) == (1, 2)
  return c


def final_state(workdir):
  """The last student checkpoint's arrays and meta (host numpy)."""
  ck = ckpt_lib.RunCheckpointer(os.path.join(workdir, "checkpoints", "train"),
                                keep=2, fingerprint={})
  epoch = ck.latest_epoch()
  path = os.path.join(ck.directory, "latest", str(epoch))
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as c:
    state = c.restore(os.path.join(path, "state"))
  return epoch, jax.tree.map(np.asarray, state)


def selections(workdir):
  d = os.path.join(workdir, "selections")
  return {f: np.load(os.path.join(d, f)) for f in sorted(os.listdir(d))
          if f.endswith(".npy")}


@pytest.fixture(scope="module")
def uninterrupted(tiny_run):
  return tiny_run  # (read-only: the tests that change it change a copy)


def test_sigkill_mid_epoch_then_resume_is_bit_exact(uninterrupted, tmp_path):
  ref_dir, ref_summary = uninterrupted
  workdir = str(tmp_path / "killed")
  # Killed during epoch index 2 (after 3 of its 6 steps): the checkpoints of
  # epochs 1 and 2 exist, the selection at epoch 2 has just been made.
  p = subprocess.run(
      [sys.executable, os.path.join(HERE, "resume_worker.py"), workdir, "2",
       "3"], capture_output=True, text=True, timeout=1200, check=False)
  assert p.returncode == -9, p.stderr[-3000:]
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "train", "latest",
                                    "2"))
  summary = train.train_and_evaluate(resume_config(), workdir)
  epoch, state = final_state(workdir)
  ref_epoch, ref_state = final_state(ref_dir)
  assert epoch == ref_epoch == 4
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)
  got, want = selections(workdir), selections(ref_dir)
  assert list(got) == list(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  assert summary["student_final_test_top1"] == ref_summary[
      "student_final_test_top1"]
  # The selector state travels too: the last scores and selection epoch.
  meta = json.load(open(os.path.join(workdir, "checkpoints", "train",
                                     "latest", "4", "meta", "metadata")))
  assert meta["selector"]["last_selection_epoch"] == 2
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as c:
    sel = c.restore(os.path.join(workdir, "checkpoints", "train", "latest",
                                 "4", "selector"))
  assert sel["last_evs"].shape == sel["last_ds"].shape == (192,)
  np.testing.assert_array_equal(sel["indices"], want[sorted(want)[-1]])
  # The metrics file holds each student epoch once.
  epochs = [json.loads(l)["epoch"] for l in open(os.path.join(
      workdir, "metrics.jsonl")) if '"train"' in l]
  assert epochs == [1, 2, 3, 4]


def test_finished_run_restarts_without_training(uninterrupted, tmp_path):
  workdir, summary = str(tmp_path / "copy"), uninterrupted[1]
  shutil.copytree(uninterrupted[0], workdir)
  n_lines = len(open(os.path.join(workdir, "metrics.jsonl")).readlines())
  again = train.train_and_evaluate(resume_config(), workdir)
  assert again["student_final_test_top1"] == summary["student_final_test_top1"]
  assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == (
      n_lines)


def _snapshot(directory):
  """Every file's bytes, less the lock and the log of starts (configs.jsonl,
  which records every start, refused ones included)."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      p = os.path.join(root, f)
      if f not in (".lock", "configs.jsonl"):
        out[os.path.relpath(p, directory)] = open(p, "rb").read()
  return out


def test_incompatible_config_is_refused_and_nothing_changes(uninterrupted,
                                                            tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted[0], workdir)
  before = _snapshot(workdir)
  c = resume_config()
  c.coreset.fraction = 0.25
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"incompatible config.*coreset\.fraction: 0\.5"):
    train.train_and_evaluate(c, workdir)
  assert _snapshot(workdir) == before


def test_corrupt_checkpoint_is_refused_and_nothing_changes(uninterrupted,
                                                           tmp_path):
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(uninterrupted[0], workdir)
  latest = os.path.join(workdir, "checkpoints", "train", "latest", "4")
  # Damage every data file of the state item.
  for root, _, files in os.walk(os.path.join(latest, "state")):
    for f in files:
      if "ocdbt" in root or f.startswith("d") or root.endswith("/d"):
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  before = _snapshot(workdir)
  with pytest.raises(ckpt_lib.CheckpointError, match="corrupt") as e:
    train.train_and_evaluate(resume_config(), workdir)
  assert len(str(e.value)) < 800 and "\n" not in str(e.value)  # one line
  assert _snapshot(workdir) == before
  # Unreadable meta: refused too.
  with open(os.path.join(latest, "meta", "metadata"), "w") as fh:
    fh.write("{not json")
  with pytest.raises(ckpt_lib.CheckpointError, match="corrupt"):
    train.train_and_evaluate(resume_config(), workdir)


def test_every_manager_has_its_own_multihost_barrier(tmp_path):
  # The "latest" and "best" saves of one epoch run at once; orbax names its
  # commit barrier after the step directory, so each manager needs a prefix
  # of its own (two processes collided on "_async_commit_complete.1").
  prefixes = []
  for stage in ("teacher", "train"):
    ckpt = ckpt_lib.RunCheckpointer(str(tmp_path / "checkpoints" / stage),
                                    keep=1, fingerprint={})
    for kind in ("latest", "best"):
      options = ckpt._manager(kind)._options  # pylint: disable=protected-access
      prefixes.append(options.multiprocessing_options.barrier_sync_key_prefix)
    ckpt.close()
  assert prefixes == ["teacher_latest", "teacher_best", "train_latest",
                      "train_best"]


def test_a_field_added_at_its_old_behaviour_keeps_old_fingerprints():
  new = tiny_config()
  old = tiny_config()
  del old.coreset["exclude_teacher_errors"]  # a config.json from before it
  assert ckpt_lib.config_fingerprint(new) == ckpt_lib.config_fingerprint(old)
  new.coreset.exclude_teacher_errors = True
  assert ckpt_lib.config_fingerprint(new)[
      "coreset.exclude_teacher_errors"] is True
