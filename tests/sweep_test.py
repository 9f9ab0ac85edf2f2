"""The sweep: grid planning, one shared teacher, reports, resume."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from acs_jax import config_lib, sweep, sweep_report
from tiny_configs import tiny_config



def tiny_sweep_config(**sweep_fields) -> ml_collections.ConfigDict:
  """The tiny experiment at one epoch per stage, plus a 3-run grid."""
  c = tiny_config(**{"teacher.epochs": 1, "train.epochs": 1})
  c.sweep = sweep.sweep_defaults()
  c.sweep.update({"name": "tiny", "selectors": ("full", "random"),
                  "fractions": (0.25, 0.5), "seeds": (0,),
                  **sweep_fields})
  return c


def test_plan_grid_names_and_teacher_assignment():
  c = tiny_sweep_config(selectors=("full", "acs", "random"), seeds=(0, 1),
                        label_noise=(0.0, 0.2))
  runs = sweep.plan(c)
  names = [r.name for r in runs]
  # "full" once per seed (fraction 1.0), the others per fraction and seed.
  assert names[:6] == ["full_f1.0_s0", "full_f1.0_s1", "acs_f0.25_s0",
                       "acs_f0.25_s1", "acs_f0.5_s0", "acs_f0.5_s1"]
  assert len(runs) == 2 * (2 + 2 * 2 * 2)
  assert names[10] == "full_f1.0_s0_noise0.2"
  noisy = [r for r in runs if r.label_noise == 0.2]
  assert all(r.config.data.label_noise == 0.2 for r in noisy)
  assert all("sweep" not in r.config for r in runs)
  assert runs[3].config.seed == 1 and runs[3].config.coreset.fraction == 0.25
  # One teacher per noise rate, trained by that rate's first run.
  assert [r.name for r in runs if r.trains_teacher] == [
      "full_f1.0_s0", "full_f1.0_s0_noise0.2"]
  assert {r.teacher_run for r in noisy} == {"full_f1.0_s0_noise0.2"}
  shared = sweep.plan(tiny_sweep_config(label_noise=(0.0, 0.2),
                                        teacher_per_noise=False))
  assert sum(r.trains_teacher for r in shared) == 1


@pytest.mark.parametrize("field,value,match", [
    ("selectors", ("full", "best"), r"config\.sweep\.selectors.*'best'.*acs"),
    ("fractions", (0.1, 1.5), r"config\.sweep\.fractions.*1\.5"),
    ("seeds", (0, 0), r"config\.sweep\.seeds.*repeats"),
    ("label_noise", (1.0,), r"config\.sweep\.label_noise"),
])
def test_bad_sweep_fields(field, value, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    sweep.plan(tiny_sweep_config(**{field: value}))


def test_bad_run_config_and_small_coreset_stop_before_any_work(tmp_path):
  c = tiny_sweep_config()
  c.coreset.schedule = "exp"
  with pytest.raises(config_lib.ConfigError,
                     match=r"sweep run full_f1\.0_s0: config\.coreset\.sched"):
    sweep.run_sweep(c, str(tmp_path / "a"))
  # 0.05 of 192 samples is 8 (2 a class) < batch 16: refused up front.
  c = tiny_sweep_config(fractions=(0.5, 0.05))
  with pytest.raises(config_lib.ConfigError,
                     match=r"random_f0\.05_s0.*batch_size=16"):
    sweep.run_sweep(c, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "a" / "runs")
  assert not os.path.exists(tmp_path / "b" / "runs")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/sweep_r20_cifar10.py shrunk to seconds: tiny data, tiny model, one
# epoch per stage, full + random at two fractions (3 runs, one teacher). A
# constant LR keeps the QAT step's program the same for every fraction, so
# runs 2 and 3 take it from the compilation cache (most of the test's time is
# XLA compiling).
TINY_OVERRIDES = {
    "data.source": "synthetic", "data.num_train": 192, "data.num_test": 72,
    "data.num_classes": 4, "model.name": "resnet_tiny",
    "teacher.epochs": 1, "teacher.batch_size": 32, "train.epochs": 1,
    "train.batch_size": 16, "train.eval_batch_size": 32,
    "train.schedule": "constant",
    "sweep.name": "tiny", "sweep.selectors": ("full", "random"),
    "sweep.fractions": (0.25, 0.5), "sweep.seeds": (0,),
}


def _sweep_file_config(**changes) -> ml_collections.ConfigDict:
  """The sweep config file with TINY_OVERRIDES, as the command line sets it."""
  spec = importlib.util.spec_from_file_location(
      "sweep_r20_cifar10", os.path.join(ROOT, "configs",
                                        "sweep_r20_cifar10.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for key, value in {**TINY_OVERRIDES, **changes}.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def test_sweep_cli_end_to_end_one_teacher_reports_and_resume(tmp_path, capsys,
                                                             caplog):
  workdir = str(tmp_path)
  # The command line as a user runs it: one CPU device (not the 8 that
  # conftest fakes) and the sweep's own persistent compilation cache (not the
  # test session's), which lets runs 2 and 3 skip most compiling.
  env = {k: v for k, v in os.environ.items()
         if k != "JAX_COMPILATION_CACHE_DIR"}
  # Every compile is cached, however fast this machine compiles: the sweep
  # keeps only compiles of 1 s or more by default, and on a fast CPU none of
  # the tiny runs' compiles may take that long.
  env = {**env, "JAX_PLATFORMS": "cpu",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "XLA_FLAGS": " ".join(
             f for f in os.environ.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f)}
  flags = [f"--config.{k}={v}".replace(" ", "")
           for k, v in TINY_OVERRIDES.items()]
  cmd = [sys.executable, "-m", "acs_jax.sweep",
         "--config=configs/sweep_r20_cifar10.py", f"--workdir={workdir}",
         *flags]
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=1200, check=False)
  assert p.returncode == 0, p.stderr[-3000:]
  names = ["full_f1.0_s0", "random_f0.25_s0", "random_f0.5_s0"]
  assert [line.split(":")[0] for line in p.stdout.splitlines()
          if line.startswith("[")] == [
              f"[{i}/3] {n}" for i, n in enumerate(names, 1)]

  # The teacher was trained once, by the first run; the others loaded it.
  trained = [n for n in names if os.path.exists(
      os.path.join(workdir, "runs", n, "teacher", "variables"))]
  assert trained == ["full_f1.0_s0"]
  for n in names:
    lines = [json.loads(l) for l in open(
        os.path.join(workdir, "runs", n, "metrics.jsonl"))]
    n_teacher = sum(l["stage"] == "teacher" for l in lines)
    assert n_teacher == (1 if n == "full_f1.0_s0" else 0), n
    assert sum(l["stage"] == "train" for l in lines) == 1
    config = json.load(open(os.path.join(workdir, "runs", n, "config.json")))
    assert config["teacher"]["checkpoint"] == (
        "" if n == "full_f1.0_s0" else
        os.path.join(workdir, "runs", "full_f1.0_s0", "teacher"))

  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert [t["run"] for t in table] == names
  assert [t["selector"] for t in table] == ["full", "random", "random"]
  assert [float(t["fraction"]) for t in table] == [1.0, 0.25, 0.5]
  assert [t["teacher_trained_here"] for t in table] == ["True", "False",
                                                        "False"]
  assert float(table[0]["seconds_teacher"]) > 0
  assert float(table[1]["seconds_teacher"]) == 0.0
  assert [int(t["coreset_size"]) for t in table] == [192, 48, 96]
  assert len({t["teacher_top1"] for t in table}) == 1
  for t in table:
    assert t["sweep"] == "tiny" and t["seed"] == "0"
    assert 0.0 <= float(t["student_final_top1"]) <= 1.0
    for key in ("seconds_select", "seconds_train", "seconds_eval"):
      assert float(t[key]) >= 0.0
  md = open(os.path.join(workdir, "results.md")).read()
  assert "| selector | fraction | seeds | final top-1 (%)" in md
  assert "| random | 0.25 | 1 |" in md and "| full | 1.0 | 1 |" in md
  for png in ("accuracy_vs_fraction.png", "accuracy_vs_time.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(os.path.join(workdir, "jax_cache"))

  # A second invocation (here in-process, same config) trains nothing.
  summaries = {n: os.path.getmtime(os.path.join(workdir, "runs", n,
                                                "summary.json"))
               for n in names}
  os.remove(os.path.join(workdir, "results.csv"))
  capsys.readouterr()
  rows = sweep.run_sweep(_sweep_file_config(), workdir)
  assert capsys.readouterr().out.count("finished earlier, skipped") == 3
  assert [r["run"] for r in rows] == names
  assert os.path.exists(os.path.join(workdir, "results.csv"))
  for n in names:
    assert os.path.getmtime(os.path.join(workdir, "runs", n,
                                         "summary.json")) == summaries[n]
  assert "different config" not in caplog.text
  # A finished run is kept even if the config changed, with a warning.
  sweep.run_sweep(_sweep_file_config(**{"sweep.selectors": ("full",),
                                        "train.lr": 0.03}), workdir)
  assert "different config (train.lr)" in caplog.text


def test_markdown_mean_and_std_over_seeds():
  rows = [{"run": f"acs_f0.1_s{s}", "selector": "acs", "fraction": 0.1,
           "seed": s, "label_noise": 0.0, "student_final_top1": a,
           "student_best_top1": a, "teacher_top1": 0.9,
           "teacher_trained_here": s == 0, "seconds_teacher": 10.0,
           "seconds_select": 1.0, "seconds_train": 2.0, "seconds_eval": 3.0}
          for s, a in ((0, 0.70), (1, 0.72))]
  md = sweep_report.markdown_table(rows)
  assert ("| acs | 0.1 | 2 | 71.00 ± 1.41 | 71.00 ± 1.41 | 1 ± 0 | 2 ± 0 "
          "| 3 ± 0 |") in md
  assert "test top-1 90.00 %" in md

