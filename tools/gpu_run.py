r"""One short session on a lent GPU: the benchmark, then the paper's CIFAR run.

  python tools/gpu_run.py --data=PATH/cifar10.npz             # ~9 min
  python tools/gpu_run.py --data=PATH/cifar10.npz --budget_s 3600
  python tools/gpu_run.py --data=... --teacher_checkpoint=DIR  # QAT only
  python tools/gpu_run.py --tiny      # the same steps on CPU, a minute or two

Six flat files go to --out (default: $OUT, else ./gpu_out):
  1. bench.json, bench.txt: `python -m acs_jax.bench` at the recipe's batch
     (256): the train steps with and without the teacher, the score pass,
     one re-selection, the matmul yardstick; float32 and bfloat16 on a GPU,
     with MFU against the device's datasheet peak.
  2. run.log, run_metrics.jsonl, run_summary.json: one paper-protocol
     CIFAR-10 run, configs/r18_w2.py (ResNet-18, 2-bit weights, KD from the
     FP teacher, ACS at 10 % re-selected every 10 epochs, SGD, batch 256) on
     --data: an .npz (data.source "npz") or a folder root/{train,test}/<class>/
     of images ("image_folder"). Its workdir (checkpoints, selections, tb/)
     is --workdir, by default a new temporary folder. The recipe's epochs
     (teacher 200, QAT 200) where they fit in what is left of --budget_s;
     otherwise fewer, from the benchmark's step times (`choose_epochs`: half
     the time to each stage, the rest to QAT). A run still going when the
     budget is spent is stopped; its metrics so far remain.
  3. gpu_run.json: the device, the epochs and why, the estimate and the
     measured wall time of each stage, the accuracies.

--tiny checks the script, not the GPU: resnet_tiny at small batches for the
benchmark, and the run on the bundled 8x8 digits with 1 teacher and 1 QAT
epoch (the numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_EPOCHS = (200, 200)  # configs/r18_w2.py: teacher, QAT
BATCH = 256  # configs/r18_w2.py: teacher, QAT, eval and score batches
FRACTION = 0.1
EVERY = 10  # re-selection every R epochs
START_S = 60.0  # process start, data loading, checkpoint set-up
SLACK = 1.3  # input pipeline, evaluation and logging beyond the bench's steps


def _case(bench: dict, name: str) -> dict | None:
  return next((c for c in bench.get("cases", []) if c["case"] == name
               and c["dtype"] == "float32"), None)


def choose_epochs(bench: dict | None, seconds: float, n_train: int,
                  n_test: int, recipe: tuple[int, int] = RECIPE_EPOCHS,
                  teacher_trains: bool = True) -> dict:
  """(teacher, QAT) epochs that fit in `seconds`, from the benchmark.

  Per epoch: steps x the measured step time (train_fp for the teacher,
  train_kd for QAT) plus a test pass at the score step's rate, times SLACK;
  QAT also pays a re-selection every EVERY epochs and the teacher softmax
  cache once. Fixed: START_S plus twice each compile (train, eval and score
  functions). Half of what is left goes to the teacher (at most its recipe),
  the rest to QAT (at most its recipe), at least 1 epoch each.
  """
  fp, kd, sc = (_case(bench or {}, n) for n in ("train_fp", "train_kd",
                                                 "score"))
  if not (fp and kd and sc):
    return {"teacher": recipe[0] if teacher_trains else 0, "train": recipe[1],
            "why": "no benchmark figures: the recipe, stopped at the budget"}
  per_img = sc["step_s"]["median"] / sc["batch"]
  reselect = next((r["total_s"] for r in bench["reselection"]
                   if r["dtype"] == "float32"), n_train * per_img)
  t_epoch = SLACK * ((n_train // BATCH) * fp["step_s"]["median"]
                     + n_test * per_img)
  coreset = max(1, int(n_train * FRACTION))
  s_epoch = SLACK * (max(1, coreset // BATCH) * kd["step_s"]["median"]
                     + n_test * per_img + reselect / EVERY)
  fixed = START_S + n_train * per_img + 2 * sum(
      c["compile_s"] + c["lower_s"] for c in (fp, kd, sc))
  left = max(0.0, seconds - fixed)
  teacher = 0
  if teacher_trains:
    teacher = max(1, min(recipe[0], math.floor(left / 2 / t_epoch)))
    left -= teacher * t_epoch
  train = max(1, min(recipe[1], math.floor(left / s_epoch)))
  fits = (teacher, train) == ((recipe[0] if teacher_trains else 0), recipe[1])
  return {"teacher": teacher, "train": train,
          "why": "the recipe fits" if fits else "scaled to the budget",
          "estimate_s": fixed + teacher * t_epoch + train * s_epoch,
          "teacher_epoch_s": t_epoch, "train_epoch_s": s_epoch,
          "fixed_s": fixed}


def _run(cmd: list[str], log_path: str, timeout_s: float) -> dict:
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    try:
      rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                          cwd=REPO, timeout=max(1.0, timeout_s),
                          check=False).returncode
    except subprocess.TimeoutExpired:
      rc = "timeout"
  return {"cmd": cmd, "rc": rc, "wall_s": time.perf_counter() - t0,
          "log": log_path}


def _last_epochs(metrics_path: str) -> dict:
  """The last metrics record of each stage (what finished)."""
  last = {}
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      for line in f:
        rec = json.loads(line)
        if "stage" in rec:
          last[rec["stage"]] = rec
  return last


def _data_flags(path: str) -> tuple[int, int, list[str]]:
  """(train size, test size, --config.data flags) of an .npz or folder."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    n = [sum(len(f) for _, _, f in os.walk(os.path.join(path, split)))
         for split in ("train", "test")]
    return n[0], n[1], ["--config.data.source=image_folder",
                        f"--config.data.path={path}"]
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(path) as z:
    n = len(z["y_train"]), len(z["y_test"])
  return n[0], n[1], ["--config.data.source=npz", f"--config.data.path={path}"]


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      description="The benchmark, then one paper-protocol CIFAR-10 run, on "
                  "a GPU (see the module docstring).")
  p.error = _fail  # one line, exit status 2
  p.add_argument("--data", help="CIFAR-10: one .npz (x_train, y_train, "
                 "x_test, y_test) or an image folder; not needed with --tiny")
  p.add_argument("--out", default=os.environ.get("OUT") or "gpu_out")
  p.add_argument("--workdir", help="the run's workdir (default: a new "
                 "temporary folder)")
  p.add_argument("--budget_s", type=float, default=540.0,
                 help="wall seconds for both steps together")
  p.add_argument("--teacher_checkpoint", default="",
                 help="a saved FP teacher: the run skips training one")
  p.add_argument("--tiny", action="store_true",
                 help="resnet_tiny and the digits: tests the script on CPU")
  args = p.parse_args(argv)
  if (not args.tiny or args.data) and not (args.data and os.path.exists(
      args.data)):
    _fail(f"--data={args.data}: no such file; give CIFAR-10 as an .npz, e.g."
          " ../shared/data/cifar10/cifar10.npz, or an image folder (or --tiny"
          " for a CPU check)")
  if args.teacher_checkpoint and not os.path.isdir(args.teacher_checkpoint):
    _fail(f"--teacher_checkpoint={args.teacher_checkpoint}: no such folder")
  if args.budget_s <= 0:
    _fail(f"--budget_s={args.budget_s}: must be > 0")
  if args.workdir and os.path.exists(args.workdir):
    _fail(f"--workdir={args.workdir}: exists already; give a new folder")
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  workdir = os.path.abspath(args.workdir or os.path.join(
      tempfile.mkdtemp(prefix="acs_gpu_run_"), "run"))
  t_start = time.perf_counter()
  py = sys.executable

  # 1. The benchmark.
  bench_json = os.path.join(out, "bench.json")
  flags = (["--model", "resnet_tiny", "--batch", "16", "--score_batch", "32",
            "--quick"] if args.tiny else
           ["--batch", str(BATCH), "--score_batch", str(BATCH)])
  bench_run = _run([py, "-m", "acs_jax.bench", *flags, "--cases",
                    "matmul,train_kd,train_fp,score,reselection", "--out",
                    bench_json], os.path.join(out, "bench.txt"),
                   args.budget_s / 2)
  bench = None
  if bench_run["rc"] == 0:
    with open(bench_json) as f:
      bench = json.load(f)

  # 2. The paper-protocol run, in what is left of the budget.
  left = args.budget_s - (time.perf_counter() - t_start)
  recipe = (1, 1) if args.tiny else RECIPE_EPOCHS
  if args.data:
    n_train, n_test, data = _data_flags(args.data)
  else:  # --tiny: the digits' fixed split
    n_train, n_test = 1437, 360
    data = ["--config.data.source=digits", "--config.data.name=digits"]
  if args.tiny:
    data += ["--config.model.name=resnet_tiny", "--config.teacher.batch_size"
             "=64", "--config.train.batch_size=32", "--config.log_every_steps"
             "=0"]
  epochs = choose_epochs(bench, left, n_train, n_test, recipe,
                         teacher_trains=not args.teacher_checkpoint)
  cmd = [py, "-m", "acs_jax.main", "--config=configs/r18_w2.py",
         f"--workdir={workdir}", *data,
         f"--config.teacher.epochs={max(1, epochs['teacher'])}",
         f"--config.train.epochs={epochs['train']}"]
  if args.teacher_checkpoint:
    cmd.append("--config.teacher.checkpoint="
               f"{os.path.abspath(args.teacher_checkpoint)}")
  print(f"paper run: {epochs['teacher']} teacher + {epochs['train']} QAT "
        f"epochs ({epochs['why']}), {left:.0f} s left", flush=True)
  paper = _run(cmd, os.path.join(out, "run.log"), left)
  paper["workdir"] = workdir
  summary = None
  for name in ("summary.json", "metrics.jsonl"):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name),
                  os.path.join(out, "run_" + name))
  if os.path.exists(os.path.join(out, "run_summary.json")):
    with open(os.path.join(out, "run_summary.json")) as f:
      summary = json.load(f)
  result = {
      "tool": "tools/gpu_run.py", "tiny": args.tiny,
      "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "machine": (bench or {}).get("machine"),
      "peak": (bench or {}).get("peak"), "budget_s": args.budget_s,
      "bench": bench_run, "epochs": epochs, "paper_run": paper,
      "summary": summary,
      "last_epochs": _last_epochs(os.path.join(workdir, "metrics.jsonl")),
      "wall_s": time.perf_counter() - t_start}
  with open(os.path.join(out, "gpu_run.json"), "w") as f:
    json.dump(result, f, indent=1)
  if bench_run["rc"] == 0:
    with open(bench_run["log"]) as f:
      text = f.read()
    print(text[text.find("acs_jax.bench "):][:4000], flush=True)
  s = summary or {}
  print(f"paper run rc {paper['rc']}, {paper['wall_s']:.0f} s: teacher "
        f"{s.get('seconds_teacher', float('nan')):.0f} s top-1 "
        f"{s.get('teacher_test_top1')}, QAT {s.get('seconds_student', 0):.0f}"
        f" s final top-1 {s.get('student_final_test_top1')}; total "
        f"{result['wall_s']:.0f} s; {out}/gpu_run.json", flush=True)
  return 0 if bench_run["rc"] == 0 and paper["rc"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
