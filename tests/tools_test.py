"""The scripts under tools/: their logic, bad input, and each run end to end
on a tiny case (their timings mean nothing and are never bounded).

The comparison with the official code needs its checkout: the environment
variable ACS_JAX_OFFICIAL_QATACS, else ../shared/reference/official_qatacs
beside this repository; without one (a clean clone) or without torch, that
test is skipped.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from acs_jax import env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
OFFICIAL = os.environ.get("ACS_JAX_OFFICIAL_QATACS") or os.path.join(
    REPO, "..", "shared", "reference", "official_qatacs")


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(TOOLS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # (dataclasses look their module up there)
  spec.loader.exec_module(module)
  return module


compare = _load("compare_official")
gpu_run = _load("gpu_run")
probe = _load("probe_xla")
selection_report = _load("selection_report")


def _tool(name, *args, timeout=900):
  return subprocess.run([sys.executable, os.path.join(TOOLS, name), *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _official_or_skip() -> str:
  if not os.path.isfile(os.path.join(OFFICIAL, "deepcore", "nets",
                                     "lsq_quant_resnet.py")):
    pytest.skip(f"no checkout of HuangOwen/QAT-ACS at {OFFICIAL}: set "
                "ACS_JAX_OFFICIAL_QATACS to one")
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed")
  return OFFICIAL


# ---------------------------------------------------------------------------
# tools/compare_official.py


def test_compare_interleaves_and_shares_the_score_pass():
  got = compare.plan(["qat_kd_w2a2", "score_as_written", "score_inference"],
                     2)
  one = [("qat_kd_w2a2", "official"), ("qat_kd_w2a2", "acs_jax"),
         ("score_as_written", "official"), ("score_as_written", "acs_jax"),
         ("score_inference", "official")]  # acs_jax's score pass: once
  assert got == [(r, c, s) for r in (0, 1) for c, s in one]


def test_compare_ratios_per_round():
  def run(rnd, case, side, ips, rss=100.0):
    rec = {"round": rnd, "case": case, "side": side, "peak_rss_mb": rss}
    return rec if ips is None else {**rec, "images_per_s": ips}

  runs = [run(0, "fp", "official", 10.0), run(0, "fp", "acs_jax", 15.0),
          run(1, "fp", "official", 20.0), run(1, "fp", "acs_jax", 20.0),
          run(2, "fp", "official", 10.0), run(2, "fp", "acs_jax", None)]
  (s,) = compare.summarize(runs, ["fp"])
  assert s["ratios"] == [1.5, 1.0]  # round 2 failed: no ratio
  assert s["ratio"] == {"median": 1.25, "min": 1.0, "max": 1.5}
  assert s["official_images_per_s"]["max"] == 20.0
  assert s["acs_jax_peak_rss_mb"]["median"] == 100.0
  assert "1.25 [1.00-1.50]" in compare.format_table({
      "date_utc": "d", "cpu_model": "cpu", "threads": 2, "rounds": 3,
      "steps": 10, "tiny": False, "summary": [s]})


@pytest.mark.parametrize("args,message", [
    (["--official", "/nonexistent"], "error: --official=/nonexistent: not a "
                                     "checkout of HuangOwen/QAT-ACS"),
    (["--official", "/nonexistent", "--cases", "fp,nope"],
     "error: --cases=fp,nope: unknown case nope; valid: qat_kd_w2a2, "),
    (["--official", "/nonexistent", "--rounds", "0"],
     "error: argument --rounds: '0': not an integer >= 1"),
])
def test_compare_bad_input_exits_2(args, message):
  r = _tool("compare_official.py", *args, timeout=60)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr


def test_compare_end_to_end_tiny(tmp_path):
  official = _official_or_skip()
  out = tmp_path / "compare.json"
  r = _tool("compare_official.py", f"--official={official}", "--tiny",
            "--rounds", "1", "--cases", "qat_kd_w2a2,score_inference",
            "--out", str(out))
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  d = json.loads(out.read_text())
  assert [(x["case"], x["side"]) for x in d["runs"]] == [
      ("qat_kd_w2a2", "official"), ("qat_kd_w2a2", "acs_jax"),
      ("score_inference", "official"), ("score_inference", "acs_jax")]
  for x in d["runs"]:
    assert x["rc"] == 0 and x["images_per_s"] > 0 and x["peak_rss_mb"] > 0
    if x["side"] == "official":
      assert x["result"]["finite"] and x["result"]["threads"] == d["threads"]
    else:
      assert x["result"]["machine"]["platform"] == "cpu"
  for s in d["summary"]:
    assert len(s["ratios"]) == 1 and s["ratio"]["median"] > 0
  assert d["cpu_model"] and d["torch"] and d["jax"]
  assert d["cpu_model"] in r.stdout and "TINY" in r.stdout


# ---------------------------------------------------------------------------
# tools/gpu_run.py


def _bench(fp_step, kd_step, score_step, compile_s=10.0):
  def case(name, step, batch):
    return {"case": name, "dtype": "float32", "batch": batch,
            "step_s": {"median": step}, "compile_s": compile_s,
            "lower_s": 1.0}
  return {"cases": [case("train_fp", fp_step, 256),
                    case("train_kd", kd_step, 256),
                    case("score", score_step, 256)],
          "reselection": [{"dtype": "float32", "total_s": 5.0}]}


def test_gpu_run_epochs_fit_the_budget():
  bench = _bench(0.02, 0.03, 0.01)
  fits = gpu_run.choose_epochs(bench, 1e6, 50_000, 10_000)
  assert (fits["teacher"], fits["train"]) == (200, 200)
  assert fits["why"] == "the recipe fits"
  short = gpu_run.choose_epochs(bench, 400.0, 50_000, 10_000)
  assert 1 <= short["teacher"] < 200 and short["why"] == "scaled to the budget"
  assert short["estimate_s"] <= 400.0
  # Half of the time after the fixed costs at most goes to the teacher.
  assert short["teacher"] * short["teacher_epoch_s"] <= (
      400.0 - short["fixed_s"]) / 2
  qat_only = gpu_run.choose_epochs(bench, 400.0, 50_000, 10_000,
                                   teacher_trains=False)
  assert qat_only["teacher"] == 0 and qat_only["train"] > short["train"]
  assert gpu_run.choose_epochs(None, 400.0, 50_000, 10_000)["teacher"] == 200


def test_gpu_run_needs_data_unless_tiny(tmp_path):
  r = _tool("gpu_run.py", "--out", str(tmp_path), timeout=60)
  assert r.returncode == 2
  assert r.stderr.strip().startswith("error: --data=None: no such file")


def test_gpu_run_tiny_on_cpu(tmp_path):
  out = tmp_path / "out"
  r = _tool("gpu_run.py", "--tiny", "--out", str(out), "--workdir",
            str(tmp_path / "work"))
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  # Few flat files: what a lent machine's $OUT gives back.
  assert sorted(os.listdir(out)) == [
      "bench.json", "bench.txt", "gpu_run.json", "run.log",
      "run_metrics.jsonl", "run_summary.json"]
  d = json.loads((out / "gpu_run.json").read_text())
  assert d["bench"]["rc"] == 0 and d["paper_run"]["rc"] == 0
  assert d["machine"]["platform"] == "cpu" and d["peak"] is None
  assert (d["epochs"]["teacher"], d["epochs"]["train"]) == (1, 1)
  assert d["summary"]["student_final_test_top1"] is not None
  assert d["last_epochs"]["train"]["epoch"] == 1
  assert d["paper_run"]["wall_s"] > 0
  bench = json.loads((out / "bench.json").read_text())
  assert {c["case"] for c in bench["cases"]} == {"train_kd", "train_fp",
                                                "score"}
  assert (tmp_path / "work" / "summary.json").exists()


# ---------------------------------------------------------------------------
# tools/probe_xla.py


def test_probe_variants():
  assert probe.parse_variant("noxnn:+XLA_FLAGS=--a=1,B=2") == (
      "noxnn", {"B": "2"}, {"XLA_FLAGS": "--a=1"})
  assert probe.parse_variant("base:") == ("base", {}, {})
  for bad in (":X=1", "v:X"):
    with pytest.raises(ValueError, match="--variant="):
      probe.parse_variant(bad)
  got = probe.variant_env({"XLA_FLAGS": "--x=1"}, {"Y": "2"},
                          {"XLA_FLAGS": "--z=3"})
  assert got == {"XLA_FLAGS": "--x=1 --z=3", "Y": "2"}
  managed = " ".join(f"--{k}=v" for k in env.XLA_CPU_DEFAULTS)
  got = probe.variant_env({"XLA_FLAGS": f"--x=1 {managed}"},
                          {env.XLA_DEFAULTS_ENV: "0"}, {})
  assert got["XLA_FLAGS"] == "--x=1"


def test_probe_flags_tiny(tmp_path):
  out = tmp_path / "flags.json"
  r = _tool("probe_xla.py", "flags", "--rounds", "1", "--out", str(out), "--",
            "--model", "resnet_tiny", "--batch", "16", "--cases", "train_ce",
            "--quick")
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  d = json.loads(out.read_text())
  assert [x["variant"] for x in d["runs"]] == ["acs_jax", "xla"]
  flags = {x["variant"]: x["xla_flags"] for x in d["runs"]}
  for f in env.default_xla_flags():  # what env.py adds on this jaxlib
    assert f in flags["acs_jax"] and f not in flags["xla"]
  assert d["summary"][0]["ratios_to_first"] == [1.0]
  assert d["summary"][1]["images_per_s"][0] > 0


def test_probe_profile_tiny(tmp_path):
  out = tmp_path / "profile.json"
  rc = probe.main(["profile", "--trace_dir", str(tmp_path / "trace"),
                   "--calls", "1", "--out", str(out), "--", "--model",
                   "resnet_tiny", "--batch", "16", "--cases", "train_kd",
                   "--quick"])
  assert rc == 0
  d = json.loads(out.read_text())
  names = probe.hlo_names((tmp_path / "trace" / "hlo.txt").read_text())
  assert d["kernels"] and set(d["kernels"]) <= names
  assert d["kernel_s_per_call"] > 0 and d["wall_s_per_call"] > 0


# ---------------------------------------------------------------------------
# tools/selection_report.py


def test_selection_stats_by_hand():
  right = np.ones(10, bool)
  right[[2, 4, 7]] = False          # the teacher's 3 errors
  noisy = np.zeros(10, bool)
  noisy[[4, 5]] = True
  got = selection_report.selection_stats(np.array([4, 2, 9, 1]), right, noisy,
                                         previous=np.array([1, 2, 3]))
  assert got == {"size": 4, "teacher_top1": 0.5, "teacher_wrong": 2,
                 "share_of_teacher_wrong": pytest.approx(2 / 3),
                 "flipped": 0.25, "shared_with_previous": 0.5}
  first = selection_report.selection_stats(np.array([0]), right, noisy, None)
  assert first["shared_with_previous"] is None and first["teacher_top1"] == 1
  with pytest.raises(selection_report.ReportError, match="twice"):
    selection_report.selection_stats(np.array([1, 1]), right, noisy, None)
  with pytest.raises(selection_report.ReportError, match="outside"):
    selection_report.selection_stats(np.array([10]), right, noisy, None)


def test_selection_report_on_the_tiny_run(tiny_run):
  """Against the teacher applied directly to the normalised training arrays
  (not through tf.data and the score pass) and the saved index files."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from acs_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from acs_jax import config_lib, models, quant  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets  # pylint: disable=g-import-not-at-top
  workdir, summary = tiny_run
  (row,) = selection_report.report([workdir])

  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  data = datasets.load_dataset(config_lib.data_options(config.data))
  model = models.model_from_config(config, data.num_classes,
                                   data.image_shape[0],
                                   quant.from_config(config.quant).as_float())
  like = jax.eval_shape(lambda: models.init_variables(
      model, data.image_shape, 0))
  variables, meta = ckpt_lib.load_teacher(os.path.join(workdir, "teacher"),
                                          like, {})
  x, y = data.arrays("train")
  x = (x / 255.0 - np.asarray(meta["mean"])) / np.asarray(meta["std"])
  logits = model.apply(variables, x.astype(np.float32), train=False)
  right = np.argmax(np.asarray(logits), -1) == y

  assert row["teacher_train_top1"] == pytest.approx(right.mean())
  assert row["final_top1"] == summary["student_final_test_top1"]
  assert row["seconds"]["qat"] == summary["seconds_student"]
  assert [s["epoch"] for s in row["selections"]] == [0, 2]  # R = 2, 4 epochs
  assert [s["beta"] for s in row["selections"]] == [1.0, pytest.approx(0.7071, abs=1e-4)]
  previous = None
  for sel in row["selections"]:
    idx = np.load(os.path.join(workdir, "selections",
                               f"selection_epoch{sel['epoch']:04d}.npy"))
    assert sel["size"] == idx.size == len(y) // 2
    assert sel["teacher_wrong"] == np.count_nonzero(~right[idx])
    if previous is None:
      assert sel["shared_with_previous"] is None
    else:
      assert sel["shared_with_previous"] == pytest.approx(
          np.intersect1d(idx, previous).size / idx.size)
    previous = idx
  text = selection_report.markdown([row])
  assert f"`{row['run']}`" in text and "share of all teacher errors" in text


def test_selection_report_bad_runs_exit_2(tmp_path, capsys):
  assert selection_report.main([str(tmp_path)]) == 2
  assert "no config.json" in capsys.readouterr().err
  (tmp_path / "config.json").write_text("{}")
  assert selection_report.main([str(tmp_path)]) == 2
  assert "no summary.json" in capsys.readouterr().err
  assert selection_report.main([str(tmp_path), "--json",
                                str(tmp_path / "no" / "r.json")]) == 2
  assert "--json" in capsys.readouterr().err
