r"""How fast acs_jax trains and selects on your hardware.

  python -m acs_jax.bench                     # ResNet-18, basic block, W2, b128
  python -m acs_jax.bench --quick             # fewer timed calls: a first look
  python -m acs_jax.bench --block official --bits w2a2 --cases train_kd,score
  python -m acs_jax.bench --out bench.json    # the table, and all of it in JSON

It times the jitted functions training runs, built as train.py builds them
(`train.Runner`; its score_fn jitted as `scores.score_dataset` jits it), on
random CIFAR-shaped data already on ONE device (CASES: what each case is).
Per case: lower and compile seconds (ahead of time; the jit cache then holds
the executable the timed calls use), warm-up calls, then --steps timed calls
blocked until ready; FLOPs from XLA's cost analysis. On GPU/TPU every case
runs in float32 and bfloat16 with its MFU against the datasheet peak (PEAKS).
No figure measured elsewhere is held here: compare with the official PyTorch
code on one machine (tools/compare_official.py, docs/benchmark.md).

About 510 lines: six cases, the accelerator peak table behind MFU, the
machine record and the report; the investigation probes are tools/.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from acs_jax import config_lib, env, models, quant, sharding, steps, train
from acs_jax.coreset import scores as scores_lib
from acs_jax.coreset import selector as selector_lib

SCHEMA_VERSION = 2
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
NUM_SAMPLES = 50_000  # a CIFAR-10/100 training set
FRACTION = 0.1
CASES = {
    "matmul": "an N x N jnp.dot per dtype: the yardstick of the %mm column",
    "train_kd": "QAT train step with KD (the FP teacher's forward inside)",
    "train_ce": "the same step with cross-entropy only (no teacher)",
    "train_fp": "the FP model's train step (train.py's teacher stage)",
    "score": "a batch of the score pass: student forward, cached teacher",
    "reselection": "score_dataset over 50,000 samples + acs_select at 10 %, "
                   "in epochs at the train_kd (else _ce) step time; a pass "
                   "over 60 s (--quick: 5 s) is timed on a few batches",
}
STEP_CASES = ("train_kd", "train_ce", "train_fp", "score")
DTYPES = ("float32", "bfloat16")

# Dense peak TFLOP/s of one JAX device, (name, float32, units, bfloat16), for
# the words of device_kind (all of `need`, none of `avoid`; first match wins).
# float32 is what JAX's default precision runs float32 convs/dots on: TF32
# tensor cores (NVIDIA Ampere+), a bf16 pass (TPU), CUDA cores (older GPUs,
# which have no bf16 units: None).
PEAKS_SOURCE = ("vendor datasheets (NVIDIA H200, H100, A100, L4, V100, T4; "
                "Cloud TPU v4-v6e), dense: 'with sparsity' figures / 2")
PEAKS = (
    ({"h200"}, {"nvl"}, ("NVIDIA H200 SXM", 494.7, "TF32", 989.4)),
    ({"h100", "pcie"}, (), ("NVIDIA H100 PCIe", 378.0, "TF32", 756.0)),
    ({"h100"}, {"nvl"}, ("NVIDIA H100 SXM", 494.7, "TF32", 989.4)),
    ({"a100"}, (), ("NVIDIA A100", 156.0, "TF32", 312.0)),
    ({"l4"}, (), ("NVIDIA L4", 60.0, "TF32", 121.0)),
    ({"v100"}, (), ("NVIDIA V100 SXM2", 15.7, "FP32", None)),
    ({"t4"}, (), ("NVIDIA T4", 8.1, "FP32", None)),
    ({"tpu", "v6"}, (), ("TPU v6e", 918.0, "bf16 pass", 918.0)),
    ({"tpu", "v5", "lite"}, (), ("TPU v5e", 197.0, "bf16 pass", 197.0)),
    ({"tpu", "v5p"}, (), ("TPU v5p", 459.0, "bf16 pass", 459.0)),
    ({"tpu", "v5"}, {"lite"}, ("TPU v5p", 459.0, "bf16 pass", 459.0)),
    ({"tpu", "v4"}, {"lite"}, ("TPU v4", 275.0, "bf16 pass", 275.0)),
)


def peak_for(device_kind: str) -> dict[str, Any] | None:
  """The datasheet peak of a device kind; None where unknown (no MFU)."""
  words = set(re.split(r"[\s\-_/]+", device_kind.lower()))
  for need, avoid, (name, fp32, units, bf16) in PEAKS:
    if need <= words and not words & set(avoid):
      return {"name": name, "float32": fp32, "float32_units": units,
              "bfloat16": bf16, "source": PEAKS_SOURCE}
  return None


@dataclasses.dataclass(frozen=True)
class Spec:
  """What is benchmarked, and how long."""
  model: str = "resnet18"
  block: str = "basic"
  shortcut: str = "projection"
  bits: str = "w2"
  batch: int = 128
  score_batch: int = 256
  steps: int = 5
  warmup: int = 2
  quick: bool = False


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.split(":")[0].strip() in ("model name", "Model"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _loadavg() -> float:
  return round(os.getloadavg()[0], 2)


def _rss_mb() -> float:  # the peak so far (ru_maxrss: KiB on Linux)
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info(device) -> dict[str, Any]:
  return {
      "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(
          os, "sched_getaffinity") else os.cpu_count(),
      "platform": device.platform, "device_kind": device.device_kind,
      "device": str(device), "device_count": jax.device_count(),
      "python": platform.python_version(),
      **{n: getattr(sys.modules.get(n), "__version__", None)
         for n in ("jax", "jaxlib", "flax", "optax", "numpy")},
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "loadavg_1m_start": _loadavg()}


def _stats(values: Sequence[float]) -> dict[str, float]:
  return {"median": float(statistics.median(values)),
          "min": float(min(values)), "max": float(max(values))}


def time_calls(call: Callable[[], Any], n: int, warmup: int) -> list[float]:
  """Seconds of each of `n` calls (after `warmup`), blocked until ready."""
  def one():
    t = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - t
  return [one() for _ in range(warmup + n)][warmup:]


def _flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled executable (None where it gives none)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (a backend without it)
    return None
  if isinstance(ca, (list, tuple)):  # older jax: one dict per program
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and ca.get("flops") else None


def matmul(device, dtype: str, quick: bool) -> dict[str, Any]:
  """GFLOP/s of a jitted N x N jnp.dot at JAX's default precision."""
  n = (1024 if quick else 2048) if device.platform == "cpu" else 8192
  rng = np.random.default_rng(0)
  a, b = (jax.device_put(jnp.asarray(rng.standard_normal((n, n), np.float32),
                                     dtype), device) for _ in range(2))
  f = jax.jit(jnp.dot)
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < (0.3 if quick else 1.0):  # clock up
    jax.block_until_ready(f(a, b))
  secs = time_calls(lambda: f(a, b), 5 if quick else 10, 0)
  return {"case": "matmul", "dtype": dtype, "n": n,
          "gflops": _stats([2.0 * n ** 3 / s / 1e9 for s in secs])}


def _images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(
      (n, *IMAGE_SHAPE), np.float32)


def _probs(n: int, seed: int) -> np.ndarray:
  """A random teacher softmax cache, [n, NUM_CLASSES]."""
  x = np.random.default_rng(seed).standard_normal((n, NUM_CLASSES))
  return (np.exp(x) / np.exp(x).sum(-1, keepdims=True)).astype(np.float32)


def _batch(n: int) -> dict[str, np.ndarray]:
  labels = np.random.default_rng(1).integers(0, NUM_CLASSES, n)
  return {"image": _images(n), "label": labels.astype(np.int32),
          "index": np.arange(n, dtype=np.int32)}


class Context:
  """Models, host variables and Runners of one Spec, each built once."""

  def __init__(self, spec: Spec, device):
    self.spec = spec
    self.mesh = sharding.make_mesh([device])
    self.config = config_lib.get_base_config()
    self.config.quant.bits = spec.bits
    self.qc = quant.from_config(self.config.quant)

  @functools.cache
  def model(self, dtype: str, fp: bool):
    return models.build_model(
        self.spec.model, num_classes=NUM_CLASSES, block=self.spec.block,
        shortcut=self.spec.shortcut,
        quant=self.qc.as_float() if fp else self.qc, dtype=dtype)

  @functools.cache
  def variables(self, dtype: str, fp: bool) -> dict:
    """Initial variables on host: every case gets fresh device buffers (a
    train step donates the ones it is given)."""
    if fp:
      v = models.init_variables(self.model(dtype, True), IMAGE_SHAPE, seed=0)
    else:
      v = models.student_from_teacher(
          self.model(dtype, False), self.variables(dtype, True),
          _images(min(self.spec.batch, 256), seed=2), seed=0)
    return jax.tree.map(np.asarray, v)

  @functools.cache
  def runner(self, dtype: str, case: str) -> tuple[train.Runner, Any]:
    """(Runner, optax tx) of a train case: train.py's teacher stage for
    train_fp, its QAT stage otherwise."""
    fp = case == "train_fp"
    c = self.config.teacher if fp else self.config.train
    # Steps per epoch only shape the LR schedule, not the cost.
    tx, schedule = steps.make_optimizer(
        c, NUM_SAMPLES // self.spec.batch,
        step_size_lr_mult=1.0 if fp else c.step_size_lr_mult)
    return train.Runner(
        self.model(dtype, fp), self.mesh,
        loss="kd" if case == "train_kd" else "ce",
        kd_alpha=0.0 if fp else self.config.train.kd_alpha,
        lr_schedule=schedule,
        teacher_model=None if fp else self.model(dtype, True)), tx


# A case's jitted function, arguments to lower it with, one call, images/call.
Prepared = collections.namedtuple("Prepared", "jitted args call images")


def prepare(ctx: Context, case: str, dtype: str) -> Prepared:
  """The jitted function of a STEP_CASES case, on fresh device buffers."""
  mesh, b = ctx.mesh, ctx.spec.score_batch
  if case == "score":
    runner, _ = ctx.runner(dtype, "train_kd")
    chunk = dict(_batch(b), mask=np.ones(b, bool), teacher_probs=_probs(b, 3))
    shard = NamedSharding(mesh, P(None, sharding.DATA_AXIS))  # [chunk, B]
    chunk = {k: jax.make_array_from_process_local_data(shard, v[None])
             for k, v in chunk.items()}
    # The function score_dataset calls for this score_fn (cached per
    # score_fn): the re-selection below reuses this compile.
    jitted = scores_lib._jitted_scorer(  # pylint: disable=protected-access
        runner.score_fn, ("evs", "ds"))
    args = (sharding.replicate(ctx.variables(dtype, False), mesh), chunk)
    return Prepared(jitted, args, lambda: jitted(*args), b)
  runner, tx = ctx.runner(dtype, case)
  v = ctx.variables(dtype, case == "train_fp")
  state = sharding.replicate(steps.TrainState.create(
      apply_fn=runner.model.apply, params=v["params"], tx=tx,
      batch_stats=v["batch_stats"]), mesh)
  batch = sharding.host_to_global(_batch(ctx.spec.batch), mesh)
  tvars = (sharding.replicate(ctx.variables(dtype, True), mesh)
           if case == "train_kd" else None)
  rng = jax.random.key(0)
  holder = [state]

  def call():  # the state is donated: pass the one the last step returned
    holder[0], metrics = runner.train_step(holder[0], batch, rng, tvars)
    return metrics

  return Prepared(runner.train_step, (state, batch, rng, tvars), call,
                  ctx.spec.batch)


def run_case(ctx: Context, case: str, dtype: str, peak: dict | None,
             ceiling: float | None) -> dict[str, Any]:
  """Compiles, warms up and times one case; returns its record."""
  prep = prepare(ctx, case, dtype)
  t0 = time.perf_counter()
  lowered = prep.jitted.lower(*prep.args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  step = _stats(time_calls(prep.call, ctx.spec.steps, ctx.spec.warmup))
  ips = {k: prep.images / step[s] for k, s in
         (("median", "median"), ("min", "max"), ("max", "min"))}
  flops = _flops(compiled)
  gflop_img = flops / prep.images / 1e9 if flops else None
  achieved = gflop_img * ips["median"] if gflop_img else None
  peak_tf = peak[dtype] if peak else None
  return {
      "case": case, "dtype": dtype, "batch": prep.images,
      "step_s": step, "images_per_s": ips,
      "lower_s": t1 - t0, "compile_s": t2 - t1,
      "gflop_per_image": gflop_img, "achieved_gflops": achieved,
      "pct_of_matmul": (100 * achieved / ceiling if achieved and ceiling
                        else None),
      "peak_tflops": peak_tf,
      "mfu_pct": achieved / 10 / peak_tf if achieved and peak_tf else None,
      "loadavg_1m": _loadavg()}


def _score_batches(n: int, batch: int, images: np.ndarray, labels):
  """Eval-iterator-shaped host batches over n samples (padded, masked)."""
  for start in range(0, n, batch):
    idx = np.arange(start, start + batch)
    mask = idx < n
    yield {"image": images, "label": labels[np.where(mask, idx, 0)],
           "index": np.where(mask, idx, -1).astype(np.int32), "mask": mask}


def run_reselection(ctx: Context, dtype: str, score_rec: dict | None,
                    train_rec: dict | None) -> dict[str, Any]:
  """score_dataset over NUM_SAMPLES + acs_select, and its cost in epochs."""
  b, quick = ctx.spec.score_batch, ctx.spec.quick
  runner, _ = ctx.runner(dtype, "train_kd")
  labels = np.random.default_rng(0).permutation(
      np.arange(NUM_SAMPLES) % NUM_CLASSES).astype(np.int32)
  probs = _probs(NUM_SAMPLES, 4)
  images = _images(b)
  total = math.ceil(NUM_SAMPLES / b)
  est = total * score_rec["step_s"]["median"] if score_rec else math.inf
  n = NUM_SAMPLES if est <= (5.0 if quick else 60.0) else min(
      NUM_SAMPLES, (2 if quick else 8) * b)

  def score(n_):
    return scores_lib.score_dataset(
        runner.score_fn, ctx.variables(dtype, False),
        _score_batches(n_, b, images, labels), n_, ctx.mesh,
        teacher_probs=probs[:n_])

  score(b)  # warm-up: compiles only if the score case did not run
  t0 = time.perf_counter()
  out = score(n)
  measured = time.perf_counter() - t0
  score_s = measured * total / math.ceil(n / b)
  evs, ds = (np.resize(out[k], NUM_SAMPLES) for k in ("evs", "ds"))
  t0 = time.perf_counter()
  idx, _ = selector_lib.acs_select(evs, ds, labels, epoch=10,
                                   total_epochs=200, fraction=FRACTION,
                                   schedule="cosine", balance=True)
  select_s = time.perf_counter() - t0
  rec = {"case": "reselection", "dtype": dtype, "num_samples": NUM_SAMPLES,
         "score_batch": b, "scored_samples": n, "extrapolated": n < NUM_SAMPLES,
         "scoring_measured_s": measured, "scoring_s": score_s,
         "selection_s": select_s, "total_s": score_s + select_s,
         "coreset_size": len(idx), "fraction": FRACTION}
  if train_rec is not None:
    step_s, tb = train_rec["step_s"]["median"], train_rec["batch"]
    core = max(1, len(idx) // tb) * step_s
    full = max(1, NUM_SAMPLES // tb) * step_s
    rec.update({"train_case": train_rec["case"], "coreset_epoch_s": core,
                "full_epoch_s": full, "coreset_epochs": rec["total_s"] / core,
                "full_epochs": rec["total_s"] / full})
  return rec


def _f(x, spec=".1f") -> str:
  return "-" if x is None else format(x, spec)


def format_report(result: dict[str, Any]) -> str:
  m, s, peak = result["machine"], result["settings"], result["peak"]
  lines = [
      f"acs_jax.bench {m['date_utc']}: {m['device_kind']} ({m['platform']}, "
      f"1 of {m['device_count']} devices), CPU {m['cpu_model']} x "
      f"{m['cpu_affinity']}, jax {m['jax']}, load {m['loadavg_1m_start']}",
      f"{s['model']} {s['block']} block, {s['shortcut']} "
      f"shortcut, {s['bits']}, batch {s['batch']}, "
      f"score batch {s['score_batch']}; {s['steps']} timed calls after "
      f"{s['warmup']} untimed",
      (f"peak {peak['name']}: {peak['float32']} TFLOP/s float32 "
       f"({peak['float32_units']}), {_f(peak['bfloat16'])} bfloat16"
       if peak else "unknown peak: no MFU" if m["platform"] != "cpu"
       else "CPU: no datasheet peak; %mm is of the matmul below")]
  lines += [f"matmul {r['dtype']} {r['n']}^2: {_f(r['gflops']['median'])} "
            f"GFLOP/s [{_f(r['gflops']['min'])}-{_f(r['gflops']['max'])}]"
            for r in result["matmul"]]
  lines.append(f"{'case':<9} {'dtype':<8} {'batch':>5} {'img/s':>9} "
               f"{'[min-max]':>17} {'step s':>8} {'lower':>5} {'compile':>7} "
               f"{'GF/img':>6} {'GF/s':>7} {'%mm':>4} {'MFU%':>5}")
  lines.append("-" * len(lines[-1]))
  for r in result["cases"]:
    i = r["images_per_s"]
    lines.append(
        f"{r['case']:<9} {r['dtype']:<8} {r['batch']:5d} {i['median']:9.1f} "
        f"{'[' + _f(i['min']) + '-' + _f(i['max']) + ']':>17} "
        f"{r['step_s']['median']:8.4f} {r['lower_s']:5.1f} "
        f"{r['compile_s']:7.1f} {_f(r['gflop_per_image'], '.3f'):>6} "
        f"{_f(r['achieved_gflops']):>7} {_f(r['pct_of_matmul'], '.0f'):>4} "
        f"{_f(r['mfu_pct']):>5}")
  for r in result["reselection"]:
    lines.append(
        f"reselection {r['dtype']}: score pass over {r['num_samples']} ("
        + (f"extrapolated from {r['scored_samples']}" if r["extrapolated"]
           else "all scored") + f") {r['scoring_s']:.1f} s + acs_select "
        f"{r['selection_s']:.2f} s = {r['total_s']:.1f} s")
    if "train_case" in r:
      lines.append(
          f"  = {r['coreset_epochs']:.2f} epochs of the {r['coreset_size']}-"
          f"sample coreset ({r['coreset_epoch_s']:.1f} s) = "
          f"{r['full_epochs']:.3f} full epochs ({r['full_epoch_s']:.1f} s) at "
          f"the {r['train_case']} step")
  lines.append(f"wall {result['wall_s']:.0f} s, peak RSS "
               f"{result['peak_rss_mb']:.0f} MB")
  return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[Spec, list[str], str | None]:
  """Flags -> (Spec, cases, --out); a bad one exits with status 2."""
  p = argparse.ArgumentParser(
      prog="python -m acs_jax.bench",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Speed of acs_jax's train, score and selection steps on "
                  "this machine. Cases:\n" + "\n".join(
                      f"  {k:<12} {v}" for k, v in CASES.items()))
  p.error = lambda m: p.exit(2, f"error: {m}\n")  # one line, as acs_jax.main
  p.add_argument("--model", default="resnet18", choices=models.MODELS)
  p.add_argument("--block", default="basic", choices=("basic", "official"))
  p.add_argument("--shortcut", default="projection", choices=models.SHORTCUTS,
                 help="zero_pad: He et al.'s CIFAR ResNets as pretrained")
  p.add_argument("--bits", default="w2", help="w2 (configs/r18_w2.py), "
                 "w2a2, w4a4, ...")
  p.add_argument("--batch", type=int, default=128, help="train batch")
  p.add_argument("--score_batch", type=int, default=256)
  p.add_argument("--cases", default=",".join(CASES),
                 help="comma-separated (default: all)")
  p.add_argument("--steps", type=int, help="timed calls (5; --quick 2)")
  p.add_argument("--quick", action="store_true",
                 help="fewer calls, a smaller matmul, a shorter score pass")
  p.add_argument("--out", help="JSON file to write")
  a = p.parse_args(argv)
  for flag in ("batch", "score_batch", "steps"):
    value = getattr(a, flag)
    if value is not None and value < 1:
      p.error(f"--{flag}={value}: give a count >= 1")
  cases = [c for c in a.cases.split(",") if c]
  if not cases or set(cases) - set(CASES):
    p.error(f"--cases={a.cases}: valid cases: {', '.join(CASES)}")
  try:
    quant.parse_bits(a.bits)
  except ValueError as e:
    p.error(f"--bits={a.bits}: {e}")
  spec = Spec(a.model, a.block, a.shortcut, a.bits, a.batch, a.score_batch,
              a.steps or (2 if a.quick else 5), 1 if a.quick else 2, a.quick)
  return spec, cases, a.out


def run(spec: Spec, cases: Sequence[str] = tuple(CASES), dtypes="auto",
        argv: Sequence[str] = ()) -> dict[str, Any]:
  """`cases` per dtype ("auto": float32 on CPU, + bfloat16 on GPU/TPU)."""
  t_start = time.perf_counter()
  device = jax.devices()[0]
  if dtypes == "auto":
    dtypes = ["float32"] if device.platform == "cpu" else list(DTYPES)
  peak = peak_for(device.device_kind) if device.platform != "cpu" else None
  result: dict[str, Any] = {
      "benchmark": "acs_jax.bench", "schema_version": SCHEMA_VERSION,
      "command": ["python", "-m", "acs_jax.bench", *argv],
      "machine": machine_info(device),
      "settings": {**dataclasses.asdict(spec), "dtypes": list(dtypes),
                   "cases": list(cases), "num_samples": NUM_SAMPLES,
                   "fraction": FRACTION, "image_shape": list(IMAGE_SHAPE),
                   "num_classes": NUM_CLASSES},
      "peak": peak, "rss_after_import_mb": _rss_mb(),
      "matmul": [], "cases": [], "reselection": []}
  ctx = Context(spec, device)
  for dtype in dtypes:
    ceiling = None
    if "matmul" in cases:
      result["matmul"].append(matmul(device, dtype, spec.quick))
      ceiling = result["matmul"][-1]["gflops"]["median"]
    recs = {}
    for case in (c for c in STEP_CASES if c in cases):
      recs[case] = run_case(ctx, case, dtype, peak, ceiling)
      result["cases"].append(recs[case])
      print(f"{case} {dtype}: {recs[case]['images_per_s']['median']:.1f} "
            "img/s", flush=True)
    if "reselection" in cases:
      result["reselection"].append(run_reselection(
          ctx, dtype, recs.get("score"),
          recs.get("train_kd") or recs.get("train_ce")))
  result["machine"]["loadavg_1m_end"] = _loadavg()
  result["wall_s"] = time.perf_counter() - t_start
  result["peak_rss_mb"] = _rss_mb()
  return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  spec, cases, out = parse_args(argv)
  env.configure_jax()  # XLA defaults, if no backend has started yet
  result = run(spec, cases, argv=argv)
  print(format_report(result), flush=True)
  if out:
    with open(out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
