"""Two processes x 4 CPU devices with jax.distributed: one run, one result.

Launches tests/multiprocess_worker.py twice on loopback (gloo CPU
collectives), each process running a tiny `train.train_and_evaluate` (FP
teacher 1 epoch, then 2 QAT epochs with an ACS selection at each) into a
shared workdir, then reloading the saved teacher. Asserts both processes
finished and hold the same coresets, parameters and metrics, and that they
ran the same number of steps in every epoch.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
# A hang guard, not a speed check: two processes that deadlock (e.g. one
# waiting in a collective the other never enters) are killed after it. Far
# above the run's time on a loaded 2-core machine.
TIMEOUT_S = float(os.environ.get("ACS_JAX_MULTIPROCESS_TIMEOUT", "1800"))


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tail(path, n=3000) -> str:
  try:
    with open(path, errors="replace") as f:
      text = "".join(line for line in f if "[Gloo]" not in line)
    return text[-n:]
  except OSError:
    return "<no log>"


def _launch(tmp_path):
  """Starts the workers; returns (return codes, out paths, log paths)."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": ("--xla_force_host_platform_device_count="
                    f"{DEVICES_PER_PROCESS}"),
      "PYTHONPATH": os.pathsep.join(
          [ROOT] + [p for p in [env.get("PYTHONPATH")] if p]),
      "TF_CPP_MIN_LOG_LEVEL": "2",
      "PYTHONUNBUFFERED": "1",
  })
  workdir = tmp_path / "shared_workdir"  # one workdir: shared storage
  procs, outs, logs = [], [], []
  try:
    for i in range(NUM_PROCESSES):
      out, log = tmp_path / f"out{i}.json", tmp_path / f"log{i}.txt"
      cmd = [sys.executable, WORKER, f"--coordinator=127.0.0.1:{port}",
             f"--num_processes={NUM_PROCESSES}", f"--process_id={i}",
             f"--devices={DEVICES_PER_PROCESS}", f"--workdir={workdir}",
             f"--out={out}"]
      with open(log, "w") as f:
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f,
                                      stderr=subprocess.STDOUT))
      outs.append(out)
      logs.append(log)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        return codes, outs, logs, workdir
      if any(c not in (None, 0) for c in codes):
        # One process failed: the others would wait in a collective until
        # the heartbeat timeout. Stop them now.
        break
      time.sleep(0.5)
    codes = [p.poll() for p in procs]
    detail = "\n".join(f"--- process {i} (rc={c}) ---\n{_tail(l)}"
                       for i, (c, l) in enumerate(zip(codes, logs)))
    what = ("a process failed" if any(c not in (None, 0) for c in codes)
            else f"timed out after {TIMEOUT_S:.0f}s")
    pytest.fail(f"multi-process run: {what}\n{detail}")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("multiprocess")
  t0 = time.monotonic()
  codes, outs, logs, workdir = _launch(tmp_path)
  for i, (c, log) in enumerate(zip(codes, logs)):
    assert c == 0, f"process {i} exited with {c}:\n{_tail(log)}"
  records = [json.load(open(o)) for o in outs]
  print(f"2-process run: {time.monotonic() - t0:.1f}s")
  return records, workdir


def test_both_processes_finished(run):
  records, workdir = run
  assert [r["process"] for r in records] == list(range(NUM_PROCESSES))
  assert all(r["done"] for r in records)
  # Process 0 wrote the shared outputs once.
  assert os.path.exists(workdir / "summary.json")
  assert os.path.exists(workdir / "teacher" / "teacher.json")
  summary = json.load(open(workdir / "summary.json"))
  for r in records:
    assert r["summary"]["student_final_test_top1"] == summary[
        "student_final_test_top1"]
    assert r["summary"]["teacher_test_top1"] == summary["teacher_test_top1"]


def test_same_parameters_on_every_process(run):
  records, _ = run
  for stage in ("teacher", "train"):
    ref = records[0]["final"][stage]
    for r in records[1:]:
      assert r["final"][stage]["sha256"] == ref["sha256"], stage
      assert r["final"][stage]["leaves"] == ref["leaves"]
    assert all(np.isfinite(v).all() for v in ref["leaves"].values())
  for r in records:
    # State stayed replicated across all 8 devices of both processes.
    assert r["final_sharding"] == {"teacher": ["P()"], "train": ["P()"]}


def test_same_coreset_on_every_process(run):
  records, workdir = run
  coresets = records[0]["coresets"]["train"]
  assert sorted(coresets) == ["0", "1"]  # a selection, then a re-selection
  for epoch, idx in coresets.items():
    assert len(idx) == 40 and len(set(idx)) == 40  # 0.4 x 96, balanced
    for r in records[1:]:
      assert r["coresets"]["train"][epoch] == idx, epoch
    # ...and it is what process 0 saved.
    saved = np.load(workdir / "selections" /
                    f"selection_epoch{int(epoch):04d}.npy")
    np.testing.assert_array_equal(saved, idx)


def test_every_process_runs_the_same_steps(run):
  records, _ = run
  per_process = []
  for i, r in enumerate(records):
    # Skip the single-host calibration batch reader (process_count=1).
    its = [e for e in r["iterators"] if e["process_count"] == NUM_PROCESSES]
    assert all(e["process_index"] == i for e in its)
    assert all(e["consumed"] == e["len"] for e in its)
    assert all(e["local_rows"] == 16 // NUM_PROCESSES for e in its)
    per_process.append([(e["epoch"], e["len"]) for e in its])
  # teacher: 96 // 16 = 6 steps; student: coreset 40 // 16 = 2 (8 dropped).
  assert per_process[0] == [(0, 6), (0, 2), (1, 2)]
  assert all(p == per_process[0] for p in per_process)


def test_saved_teacher_reloads_on_every_process(run):
  records, _ = run
  for r in records:
    got = r["reloaded_teacher"]
    assert got["checksum"]["sha256"] == records[0]["final"]["teacher"][
        "sha256"]
    assert got["top1"] == r["summary"]["teacher_test_top1"]
