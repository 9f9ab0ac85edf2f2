"""The speed benchmark's plumbing, never its speed (no wall-clock bounds).

A tiny model (resnet_tiny) at small batches runs every case once through the
command line; the other tests check that what is timed IS what training
runs: train.Runner's jitted step and the scorer score_dataset calls.
"""
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from acs_jax import bench, models, sharding, steps, train
from acs_jax.coreset import scores as scores_lib

TINY = ["--model", "resnet_tiny", "--batch", "16", "--score_batch", "32",
        "--quick"]
TINY_SPEC = bench.Spec(model="resnet_tiny", batch=16, score_batch=32, steps=2,
                       warmup=1, quick=True)


def _cache_size(jitted) -> int:
  """Executables in a jax.jit object's cache (1: no second compile)."""
  return jitted._cache_size()  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  result = bench.main(TINY + ["--out", str(out)])
  with open(out) as f:
    return result, json.load(f)


@pytest.fixture(scope="module")
def ctx():
  return bench.Context(TINY_SPEC, jax.devices()[0])


def test_every_case_is_reported(smoke):
  result, written = smoke
  assert written == json.loads(json.dumps(result))
  m = written["machine"]
  for k in ("cpu_model", "device_kind", "jax", "jaxlib", "date_utc",
            "loadavg_1m_start", "loadavg_1m_end"):
    assert m[k] not in (None, ""), k
  assert written["peak"] is None  # CPU: no datasheet peak
  assert [r["dtype"] for r in written["matmul"]] == ["float32"]
  assert written["matmul"][0]["gflops"]["median"] > 0
  assert [c["case"] for c in written["cases"]] == list(bench.STEP_CASES)
  for c in written["cases"]:
    assert c["step_s"]["min"] <= c["step_s"]["median"] <= c["step_s"]["max"]
    assert c["images_per_s"]["median"] == pytest.approx(
        c["batch"] / c["step_s"]["median"])
    assert c["compile_s"] > 0 and c["lower_s"] > 0
    assert c["gflop_per_image"] > 0 and c["pct_of_matmul"] > 0
    assert c["achieved_gflops"] == pytest.approx(
        c["gflop_per_image"] * c["images_per_s"]["median"])
    assert c["mfu_pct"] is None
  assert written["peak_rss_mb"] >= written["rss_after_import_mb"] > 0


def test_flops_follow_what_each_step_computes(smoke):
  # XLA's counts: KD adds the teacher's forward to the CE step, and a
  # forward-only score pass costs less per image than any train step.
  g = {c["case"]: c["gflop_per_image"] for c in smoke[1]["cases"]}
  assert g["train_kd"] > g["train_ce"]
  assert g["score"] < min(g["train_ce"], g["train_fp"])


def test_reselection_in_epochs(smoke):
  (r,) = smoke[1]["reselection"]
  assert r["extrapolated"] and r["scored_samples"] == 2 * 32
  assert r["num_samples"] == 50_000 and r["coreset_size"] == 5_000
  kd = smoke[1]["cases"][0]
  assert r["train_case"] == "train_kd"
  assert r["coreset_epoch_s"] == pytest.approx(
      5_000 // 16 * kd["step_s"]["median"])
  assert r["full_epoch_s"] == pytest.approx(
      50_000 // 16 * kd["step_s"]["median"])
  assert r["total_s"] == pytest.approx(r["scoring_s"] + r["selection_s"])
  assert r["coreset_epochs"] == pytest.approx(
      r["total_s"] / r["coreset_epoch_s"])
  assert r["scoring_s"] == pytest.approx(
      r["scoring_measured_s"] * 1563 / 2)  # ceil(50000 / 32) batches


def test_report_names_the_machine_and_every_case(smoke):
  text = bench.format_report(smoke[0])
  assert smoke[0]["machine"]["cpu_model"] in text
  for case in bench.STEP_CASES:
    assert f"\n{case} " in text
  assert "epochs of the 5000-sample coreset" in text


def test_times_the_runners_own_train_step(ctx):
  runner, tx = ctx.runner("float32", "train_kd")
  assert isinstance(runner, train.Runner)
  prep = bench.prepare(ctx, "train_kd", "float32")
  assert prep.jitted is runner.train_step
  prep.jitted.lower(*prep.args).compile()
  metrics = jax.device_get(prep.call())
  # The jit cache held the ahead-of-time executable: the call used it.
  assert _cache_size(runner.train_step) == 1
  # The same step built independently, as train.py's QAT stage builds it.
  _, schedule = steps.make_optimizer(ctx.config.train, 50_000 // 16,
                                     step_size_lr_mult=0.1)
  other = train.Runner(ctx.model("float32", False), ctx.mesh, loss="kd",
                       kd_alpha=0.5, lr_schedule=schedule,
                       teacher_model=ctx.model("float32", True))
  v = ctx.variables("float32", False)
  state = sharding.replicate(steps.TrainState.create(
      apply_fn=other.model.apply, params=v["params"], tx=tx,
      batch_stats=v["batch_stats"]), ctx.mesh)
  _, want = other.train_step(
      state, sharding.host_to_global(bench._batch(16), ctx.mesh),
      jax.random.key(0),
      sharding.replicate(ctx.variables("float32", True), ctx.mesh))
  want = jax.device_get(want)
  for k in ("loss", "accuracy", "correct"):
    np.testing.assert_array_equal(metrics[k], want[k])


def test_times_the_scorer_that_score_dataset_runs(ctx):
  runner, _ = ctx.runner("float32", "train_kd")
  prep = bench.prepare(ctx, "score", "float32")
  rec = bench.run_case(ctx, "score", "float32",
                       peak={"float32": 2.0}, ceiling=50.0)
  assert _cache_size(prep.jitted) == 1
  labels = np.arange(64, dtype=np.int32) % 10
  out = scores_lib.score_dataset(
      runner.score_fn, ctx.variables("float32", False),
      bench._score_batches(64, 32, bench._images(32), labels), 64, ctx.mesh,
      teacher_probs=bench._probs(64, 0))
  assert out["evs"].shape == (64,) and np.isfinite(out["ds"]).all()
  # score_dataset found the benchmark's executable: no second compile.
  assert _cache_size(prep.jitted) == 1
  assert rec["pct_of_matmul"] == pytest.approx(
      100 * rec["achieved_gflops"] / 50.0)
  assert rec["mfu_pct"] == pytest.approx(
      100 * rec["achieved_gflops"] / 2000.0)


@pytest.mark.parametrize("kind,name", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H200", "NVIDIA H200 SXM"),
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100"),
    ("Tesla T4", "NVIDIA T4"),
    ("TPU v5 lite", "TPU v5e"),
    ("TPU v4", "TPU v4"),
    ("NVIDIA L40S", None),  # not an L4
    ("NVIDIA GeForce RTX 4090", None),
    ("cpu", None),
])
def test_peak_by_device_kind(kind, name):
  peak = bench.peak_for(kind)
  assert (peak and peak["name"]) == name
  if peak:
    assert peak["float32"] > 0 and peak["source"]


@pytest.mark.parametrize("argv,message", [
    (["--cases", "train_kd,nope"], "--cases=train_kd,nope: valid cases: "
                                   "matmul, train_kd, train_ce"),
    (["--batch", "0"], "--batch=0: give a count >= 1"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--bits", "w9"], "--bits=w9: "),
    (["--model", "resnet99"], "argument --model: invalid choice"),
    (["--shortcut", "option_a"], "argument --shortcut: invalid choice"),
])
def test_bad_flags_exit_2(capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    bench.parse_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert message in err


def _kernels(argv):
  spec, _, _ = bench.parse_args(argv)
  ctx = bench.Context(spec, jax.devices()[0])
  v = models.init_variables(ctx.model("float32", True), (32, 32, 3), seed=0)
  return spec, [k for k in traverse_util.flatten_dict(v["params"])
                if k[-1] == "kernel"]


def test_shortcut_flag_reaches_the_model():
  # He et al.'s pretrained CIFAR ResNets use the zero-pad shortcut: the
  # benchmark can time the network the pretrained recipe trains.
  zero_spec, zero = _kernels(["--model", "resnet20", "--shortcut", "zero_pad"])
  proj_spec, proj = _kernels(["--model", "resnet20"])
  assert (zero_spec.shortcut, proj_spec.shortcut) == ("zero_pad", "projection")
  # ResNet-20 changes shape twice (16 -> 32 -> 64 channels): two 1x1 convs.
  assert len(proj) - len(zero) == 2
