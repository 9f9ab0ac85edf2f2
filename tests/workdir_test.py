"""One workdir, one run: checks before any work, the lock, config records."""
import json
import os
import signal
import subprocess
import sys

import pytest

from acs_jax import config_lib, train, workdir
from tiny_configs import tiny_config

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _hold_lock(path):
  """A process holding the workdir lock until killed."""
  code = ("import sys, time; from acs_jax import workdir; "
          f"l = workdir.Lock({str(path)!r}).__enter__(); "
          "print('held', flush=True); time.sleep(600)")
  p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_second_process_refused_and_sigkill_leaves_no_stale_lock(tmp_path):
  work = tmp_path / "run"
  holder = _hold_lock(work)
  try:
    with pytest.raises(config_lib.ConfigError,
                       match=rf"is in use by pid {holder.pid} on .*one "
                       r"workdir holds one run at a time"):
      train.train_and_evaluate(tiny_config(**{"train.epochs": 0}),
                               str(work))
    assert sorted(os.listdir(work)) == [".lock"]  # nothing else written
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir.Lock(str(work)):  # the kernel released the dead holder's lock
    pass


@pytest.mark.parametrize("field,value", [("train.batch_size", 100000),
                                         ("teacher.batch_size", 100000)])
def test_batch_larger_than_its_data_refused_before_any_work(tmp_path, field,
                                                            value):
  c = tiny_config(**{field: value - value % 8})
  with pytest.raises(config_lib.ConfigError,
                     match=rf"config\.{field}=\d+ is larger than the"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_student_fields_do_not_invalidate_the_teacher(tmp_path):
  work = str(tmp_path / "run")
  base = {"teacher.epochs": 1, "checkpoint.every_epochs": 1}
  train.train_and_evaluate(tiny_config(**base, **{"train.epochs": 0}), work)
  changed = tiny_config(**base, **{"train.epochs": 1, "train.lr": 0.005,
                                   "coreset.fraction": 0.75})
  summary = train.train_and_evaluate(changed, work)  # no fingerprint refusal
  assert 0 <= summary["student_final_test_top1"] <= 1
  with open(os.path.join(work, "config.json")) as f:
    assert json.load(f)["train"]["lr"] == 0.005  # the config that ran last
  with open(os.path.join(work, "configs.jsonl")) as f:
    lrs = [json.loads(l)["config"]["train"]["lr"] for l in f]
  assert lrs == [0.02, 0.005]


def test_divergence_stops_the_run_without_saving(tmp_path):
  work = str(tmp_path / "run")
  c = tiny_config(**{"teacher.epochs": 2, "teacher.lr": 1e30,
                     "checkpoint.every_epochs": 1})
  with pytest.raises(train.DivergenceError,
                     match=r"teacher stage diverged: the training loss "
                     r"became non-finite in epoch 1 .*Last good checkpoint: "
                     r"none\. Lower config\.teacher\.lr"):
    train.train_and_evaluate(c, work)
  assert not os.path.exists(os.path.join(work, "checkpoints", "teacher",
                                         "latest", "1"))
  assert not os.path.exists(os.path.join(work, "teacher"))
  assert not os.path.exists(os.path.join(work, "summary.json"))


def test_step_without_meta_is_refused_not_skipped(tmp_path):
  work = str(tmp_path / "run")
  c = tiny_config(**{"teacher.epochs": 2, "train.epochs": 0,
                     "checkpoint.every_epochs": 1})
  train.train_and_evaluate(c, work)
  latest = os.path.join(work, "checkpoints", "teacher", "latest")
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(work, "teacher"))  # as if killed before saving
  shutil.rmtree(os.path.join(latest, "2", "meta"))
  from acs_jax import checkpoint  # pylint: disable=g-import-not-at-top
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"latest/2 is incomplete \(its meta is missing\); "
                     r"move it away"):
    train.train_and_evaluate(c, work)


def test_npz_with_label_gaps_is_refused(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  y = rng.integers(0, 10, 40)
  y[0] = 99
  path = str(tmp_path / "gaps.npz")
  np.savez(path, x_train=rng.integers(0, 255, (40, 8, 8, 3), np.uint8),
           y_train=y, x_test=rng.integers(0, 255, (8, 8, 8, 3), np.uint8),
           y_test=y[:8])
  with pytest.raises(ValueError, match=r"imply 100 classes \(0\.\.99\), but "
                     r"89 of them have no training sample"):
    datasets.load_dataset({"source": "npz", "path": path})


def test_student_at_chance_is_reported(tmp_path):
  # An untrained teacher and a learning rate too small to move the student.
  c = tiny_config(**{"teacher.epochs": 0, "train.epochs": 1,
                     "train.lr": 1e-9})
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["student_final_test_top1"] <= 1.5 / 4
  assert "the student ends at chance level" in summary["warning"]
  with open(tmp_path / "run" / "summary.json") as f:
    assert "warning" in json.load(f)


def test_divergence_is_caught_within_log_every_steps(tmp_path):
  c = tiny_config(**{"teacher.epochs": 1, "teacher.lr": 1e30,
                     "teacher.batch_size": 8})
  c.log_every_steps = 2
  with pytest.raises(train.DivergenceError, match=r"epoch 1 \(by step 2\)"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
