"""Tests of the speed benchmark's plumbing (never of its speed).

The --smoke path (tiny model, one rep, extrapolated selection) runs
in-process and must write JSON with every field the full benchmark reports.
"""
import json
import numbers

import jax
import jax.numpy as jnp
import pytest

from acs_jax import bench

CASE_FIELDS = {
    "name": str, "kind": str, "model": str, "block": str, "bits": str,
    "batch": int, "reps": int, "images_per_s": dict, "step_s": dict,
    "lower_s": numbers.Real, "compile_s": numbers.Real,
    "gflops_per_image": numbers.Real, "achieved_gflops": numbers.Real,
    "pct_of_ceiling": numbers.Real, "cpu_s_per_call": numbers.Real,
    "minor_faults_per_call": int, "hlo": dict,
}
# Present on every case, null where they do not apply (loss of a score
# case, references of a model the reference never ran).
NULLABLE_FIELDS = ("loss", "teacher", "reference_images_per_s",
                   "ratio_to_reference", "analytic_gflops_per_image",
                   "loadavg_1m")
MACHINE_FIELDS = ("platform", "device_kind", "devices", "cpu_count",
                  "jax_version", "jaxlib_version", "xla_flags")
SELECTION_FIELDS = ("num_samples", "scoring_s", "selection_s", "total_s",
                    "extrapolated", "coreset_size", "coreset_epoch_s",
                    "full_epoch_s", "ratio_to_coreset_epoch",
                    "ratio_to_full_epoch")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  result = bench.main(["--smoke", "--out", str(out)])
  with open(out) as f:
    written = json.load(f)
  return result, written


def test_smoke_writes_every_field(smoke):
  _, d = smoke
  assert d["mode"] == "smoke"
  assert d["mode_changes"]  # says what the smoke path changes
  for k in MACHINE_FIELDS:
    assert k in d["machine"], k
  assert d["ceiling"]["median_gflops"] > 0
  assert d["cases"], "no case ran"
  kinds = {(c["kind"], c.get("teacher")) for c in d["cases"]}
  assert {("train", "forward"), ("train", None), ("score", "cached"),
          ("score", "forward")} <= kinds
  for c in d["cases"]:
    for k, t in CASE_FIELDS.items():
      assert isinstance(c[k], t), (c["name"], k, c[k])
    for k in NULLABLE_FIELDS:
      assert k in c, (c["name"], k)
    for k in ("median", "min", "max"):
      assert c["images_per_s"][k] > 0
      assert c["step_s"][k] > 0
    assert c["images_per_s"]["min"] <= c["images_per_s"]["median"] <= \
        c["images_per_s"]["max"]
    assert c["gflops_per_image"] > 0
    assert c["hlo"]["kernels"] > 0


def test_smoke_selection_and_targets(smoke):
  _, d = smoke
  sel = d["selection"]
  for k in SELECTION_FIELDS:
    assert k in sel, k
  assert sel["extrapolated"] is True and "extrapolation" in sel
  assert sel["num_samples"] == 50_000
  assert sel["coreset_size"] == 5_000
  assert sel["scoring_s"] > 0 and sel["total_s"] >= sel["scoring_s"]
  names = [t["name"] for t in d["targets"]]
  assert names == ["qat_kd_step", "score_pass", "reselection"]
  for t in d["targets"]:
    assert t["status"] in ("PASS", "MISS", "NOT_RUN")
  # The tiny model has no reference: the ResNet-18 targets are not run.
  assert d["targets"][0]["status"] == "NOT_RUN"


def test_smoke_returns_what_it_wrote(smoke):
  result, written = smoke
  assert json.loads(json.dumps(result, default=bench._json_default)) == \
      written


def test_reference_matches_bits_and_block_only():
  ref, _ = bench.reference_for(
      bench.train_case("resnet18", "official", "w2a2", "kd", 128))
  assert ref == 22.7
  assert bench.reference_for(
      bench.train_case("resnet18", "basic", "w2a2", "kd", 128))[0] is None
  assert bench.reference_for(
      bench.train_case("resnet20", "official", "w2a2", "kd", 128))[0] is None
  assert bench.reference_for(
      bench.score_case("resnet18", "basic", "w2", "cached", 256))[0] == 51.5


def test_hlo_stats_counts_fused_rounds():
  def f(x, w):
    q = jnp.clip(jnp.round(x / 0.1), -2, 1) * 0.1
    return jnp.tanh(q @ w).sum()

  text = jax.jit(f).lower(jnp.ones((8, 8)), jnp.ones((8, 8))).compile() \
      .as_text()
  s = bench.hlo_stats(text)
  assert s["kernels"] >= 1
  assert s["dots_total"] == 1
  assert s["round_ops_total"] >= 1


def test_targets_status():
  assert bench._status(None, 1.0, True) == "NOT_RUN"
  assert bench._status(1.2, 1.0, True) == "PASS"
  assert bench._status(3.5, 3.0, False) == "MISS"


def test_budget_skips_the_tail(tmp_path):
  # The first case always runs; once the budget is spent the rest are
  # listed as skipped instead of run.
  result = bench.main(["--smoke", "--budget_s", "0.001", "--no_selection",
                       "--out", str(tmp_path / "b.json")])
  assert len(result["cases"]) == 1
  assert result["skipped"]
  assert all("budget" in s["reason"] for s in result["skipped"])
  assert result["selection"] is None
