r"""Speed benchmark: QAT train step, ACS scoring and one selection, vs PyTorch.

  python -m acs_jax.bench                       # full run, <= 10 min, 2 cores
  python -m acs_jax.bench --quick               # about a minute
  python -m acs_jax.bench --out bench.json --model resnet18 --batch 128
  python -m acs_jax.bench --profile             # where XLA time goes (1 case)
  python -m acs_jax.bench --levers              # XLA flags, threads, malloc

Everything runs on random CIFAR-shaped data (32x32x3, 10 classes) on ONE
device (jax.devices()[0]). Each jitted function is lowered and compiled ahead
of time (lower_s, compile_s; the jit cache then holds the executable, so the
timed calls go through the same `jax.jit` object training uses), warmed up,
then called repeatedly with `block_until_ready` around every timed call; a
case reports the median, min and max over its reps.

Cases:
  * train: `steps.train_step` + `steps.make_optimizer` (the base config's SGD
    Nesterov, weight decay, linear schedule) jitted with donate_argnums=0, as
    `train.Runner` does. loss "kd" runs the frozen FP teacher (the same
    architecture with quantization off, as train.py builds it) inside the
    step; "ce" does not. Plus the FP train step (basic block, CE).
  * score: the selection's score step at the score batch. teacher "cached" is
    the real path: `make_score_fn` (student forward only; the teacher softmax
    comes from the per-run cache) vmapped and jitted exactly as
    `score_dataset` does, on a 1-device mesh. teacher "forward" runs student
    and teacher forward in one jitted function (no cache), the way the
    official code scores.
  * selection: `score_dataset` over 50,000 samples with the cached teacher
    (through the real tf.data eval iterator unless --selection_input=arrays),
    then `acs_select`; compared with one training epoch on the 10% coreset and
    one on the full data at the measured step time. On CPU the 50k pass is
    extrapolated from a few timed batches (the JSON says so).

FLOPs per image come from XLA's cost analysis of each compiled executable;
achieved GFLOP/s is set against an fp32 2048x2048 matmul measured in the same
run. Reference figures: the official PyTorch code on a 2-vCPU Zen 4 machine
(see REFERENCE below); ratios are only given where bits and block match.

Results go to a JSON file (--out) and a printed table. Timings are noisy on
shared machines: every case also records process CPU seconds, minor page
faults per call and the 1-minute load average, to tell load from slowness.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import functools
import gzip
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from acs_jax import config_lib
from acs_jax import env
from acs_jax import models
from acs_jax import sharding as sharding_lib
from acs_jax import steps
from acs_jax.coreset import scores as scores_lib
from acs_jax.coreset import selector as selector_lib
from acs_jax.quant import QuantConfig
from acs_jax.quant import config as quant_config
from acs_jax.quant import lsq

SCHEMA_VERSION = 1
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)

# The official PyTorch code (HuangOwen/QAT-ACS) measured on this kind of
# machine: /work/shared/reference/README.md, clean medians, images/s. Their
# "w2"/"w4" ResNet-18 quantizes weights AND activations with their block,
# i.e. our official-block w2a2 / w4a4; their FP net is the standard block.
REFERENCE = {
    "source": "official PyTorch code (HuangOwen/QAT-ACS), torch 2.13.0+cpu, "
              "2 threads, 2 vCPU AMD Zen 4; /work/shared/reference/README.md",
    "model": "resnet18",
    "batch": 128,
    "train": {
        ("official", "w2a2", "kd"): 22.7,
        ("official", "w4a4", "kd"): 24.0,
        ("official", "w2a2", "ce"): 28.7,
        ("official", "w4a4", "ce"): 29.5,
        ("basic", "fp", "ce"): 41.4,
    },
    # ACS scoring, W4A4 student + FP model, both forwards in their code.
    "score_as_run": 51.5,     # autograd left on, as adptive_css.py runs it
    "score_no_grad": 75.5,    # the same with no_grad=True (real inference)
    "matmul_gflops": 178.7,   # torch.mm fp32 2048^2, median of run medians
    # Analytic FLOPs of the CIFAR ResNet-18, per image.
    "gflop_per_image_forward": 1.1108,
    "gflop_per_image_train": 3.329,
}

TARGETS = {
    "qat_kd_step": {"threshold": 1.0, "aim": 1.5,
                    "what": "QAT train step with KD (ResNet-18, official "
                            "block, W2A2, batch 128) / reference 22.7 img/s"},
    "score_pass": {"threshold": 2.0,
                   "what": "score step with cached teacher (ResNet-18) / "
                           "reference 51.5 img/s (their scoring as run)"},
    "reselection": {"threshold": 3.0,
                    "what": "full re-selection on 50k (scoring + acs_select) "
                            "in epochs on the 10% coreset (<= threshold)"},
}


# ---------------------------------------------------------------------------
# Plan.


@dataclasses.dataclass(frozen=True)
class Case:
  """One timed jitted function.

  Attributes:
    kind: "train" or "score".
    model: model name (acs_jax.models.MODELS).
    block: "basic" or "official".
    bits: bit-width name ("fp", "w2", "w2a2", ...).
    loss: train: "kd" or "ce"; score: None.
    teacher: train: "forward" (kd) or None; score: "cached" or "forward".
    batch: images per call.
    priority: lower runs first (the --budget_s guard skips the tail).
  """
  kind: str
  model: str
  block: str
  bits: str
  loss: str | None
  teacher: str | None
  batch: int
  priority: int = 50

  @property
  def name(self) -> str:
    last = self.loss if self.kind == "train" else f"teacher_{self.teacher}"
    return (f"{self.kind}/{self.model}/{self.block}/{self.bits}/{last}/"
            f"b{self.batch}")


def train_case(model, block, bits, loss, batch, priority=50) -> Case:
  return Case("train", model, block, bits, loss,
              "forward" if loss != "ce" else None, batch, priority)


def score_case(model, block, bits, teacher, batch, priority=50) -> Case:
  return Case("score", model, block, bits, None, teacher, batch, priority)


# Order of the ResNet-18 cases: what the targets and the selection need
# first, so a budget cut drops the least informative ones.
_R18_PRIORITY = {
    ("train", "official", "w2a2", "kd"): 0,
    ("train", "basic", "w2", "kd"): 1,
    ("score", "basic", "w2", "cached"): 2,
    ("score", "official", "w4a4", "cached"): 4,
    ("train", "official", "w2a2", "ce"): 5,
    ("train", "basic", "fp", "ce"): 6,
    ("train", "official", "w4a4", "kd"): 7,
    ("train", "official", "w4a4", "ce"): 8,
    ("score", "official", "w4a4", "forward"): 9,
    ("score", "basic", "w2", "forward"): 10,
}
SELECTION_PRIORITY = 3
# (block, bits) pairs scored: like-for-like with the reference's W4A4 student
# (official block), and the repo's default config (configs/r18_w2.py).
DEFAULT_SCORE_PAIRS = (("official", "w4a4"), ("basic", "w2"))


def full_plan(args) -> list[Case]:
  """Every case the flags ask for, in priority order."""
  cases = []
  for m_i, model in enumerate(args.models):
    # A second model's key cases (< 20) still run before the first model's
    # other cases (50): a budget cut then drops the least informative ones.
    base = 20 * m_i
    def prio(key, default=50, base=base):
      return base + _R18_PRIORITY.get(key, default)
    for block in args.blocks:
      for bits in args.bits:
        for loss in args.losses:
          cases.append(train_case(model, block, bits, loss, args.batch,
                                  prio(("train", block, bits, loss))))
    if args.fp:
      cases.append(train_case(model, "basic", "fp", "ce", args.batch,
                              prio(("train", "basic", "fp", "ce"))))
    for block, bits in args.score_pairs:
      for teacher in ("cached", "forward"):
        cases.append(score_case(model, block, bits, teacher, args.score_batch,
                                prio(("score", block, bits, teacher))))
  return sorted(cases, key=lambda c: c.priority)


def quick_plan() -> list[Case]:
  """--quick: ResNet-18 headline cases at batch 32, a few ResNet-20 ones."""
  return [
      train_case("resnet18", "official", "w2a2", "kd", 32, 0),
      train_case("resnet18", "basic", "w2", "kd", 32, 1),
      score_case("resnet18", "basic", "w2", "cached", 64, 2),
      train_case("resnet20", "official", "w2a2", "kd", 128, 10),
      score_case("resnet20", "official", "w4a4", "cached", 256, 11),
  ]


QUICK_CHANGES = [
    "ResNet-18: only the official-block W2A2 KD step (the headline ratio) "
    "and the basic-block W2 KD step (the selection's epoch time), at batch "
    "32 instead of 128 (per-image throughput; the reference is at 128)",
    "ResNet-18 score step: basic-block W2 with cached teacher only, at batch "
    "64 instead of 256",
    "ResNet-20: the official-block W2A2 KD step (batch 128) and the "
    "official-block W4A4 score step with cached teacher (batch 256) only",
    "not run: CE steps, W4A4 steps, official-block W2 and basic-block "
    "W2A2/W4A4 steps, the FP step, teacher-forward score steps",
    "reps: min 2 (max 5) per case, about 2 s of timed calls per case; "
    "warm-up 1 call (0.5 s for the matmul ceiling, 5 calls)",
    "selection: the 50k scoring pass is extrapolated from 3 batches of 64 "
    "samples through numpy batches (no tf.data pipeline)",
]

SMOKE_CHANGES = [
    "tiny model (resnet_tiny, 8/16 channels) at batch 8, score batch 16",
    "1 rep per case, no warm-up beyond one call",
    "cases: basic-block W2 KD and FP CE train steps, W2 score steps",
    "selection: extrapolated from 2 batches through numpy batches",
    "for tests only: the numbers mean nothing",
]


def smoke_plan() -> list[Case]:
  return [
      train_case("resnet_tiny", "basic", "w2", "kd", 8, 0),
      score_case("resnet_tiny", "basic", "w2", "cached", 16, 1),
      train_case("resnet_tiny", "basic", "fp", "ce", 8, 3),
      score_case("resnet_tiny", "basic", "w2", "forward", 16, 4),
  ]


# ---------------------------------------------------------------------------
# Machine, timing and cost helpers.


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _loadavg() -> float | None:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def _version(module: str) -> str | None:
  try:
    return __import__(module).__version__
  except (ImportError, AttributeError):
    return None


def machine_info(device) -> dict[str, Any]:
  """Platform, devices, CPU and library versions, XLA flags."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  try:
    affinity = len(os.sched_getaffinity(0))
  except AttributeError:
    affinity = None
  return {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "bench_device": str(device),
      "devices": [str(d) for d in devices],
      "device_count": len(devices),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": affinity,
      "cpu_model": _cpu_model(),
      "python": platform.python_version(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib.__version__,
      "flax_version": _version("flax"),
      "optax_version": _version("optax"),
      "numpy_version": np.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
      "loadavg_1m_start": _loadavg(),
  }


def _stats(values: Sequence[float]) -> dict[str, float]:
  return {"median": float(statistics.median(values)),
          "min": float(min(values)), "max": float(max(values))}


@dataclasses.dataclass
class Timing:
  seconds: list[float]
  cpu_seconds: list[float]
  minor_faults: list[int]
  warmup_calls: int


def time_calls(call: Callable[[], Any], *, min_reps: int, max_reps: int,
               target_s: float, warmup_calls: int = 1,
               warmup_s: float = 0.0) -> Timing:
  """Times `call()` (blocked until ready) after a warm-up.

  Warm-up: at least `warmup_calls` calls and at least `warmup_s` seconds.
  Then timed calls until `max_reps`, or until both `min_reps` calls and
  `target_s` seconds of timed calls are done.
  """
  n, t0 = 0, time.perf_counter()
  while n < warmup_calls or time.perf_counter() - t0 < warmup_s:
    jax.block_until_ready(call())
    n += 1
  secs, cpus, faults = [], [], []
  start = time.perf_counter()
  while len(secs) < max_reps and (
      len(secs) < min_reps or time.perf_counter() - start < target_s):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0 = time.process_time()
    t = time.perf_counter()
    jax.block_until_ready(call())
    secs.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return Timing(secs, cpus, faults, n)


def cost_of(compiled) -> dict[str, float | None]:
  """FLOPs, bytes and transcendentals from XLA's cost analysis.

  Returns a dict in this jax (0.10); older versions returned a list with one
  dict per device program, handled too.
  """
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    ca = None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  ca = ca or {}

  def get(key):
    return float(ca[key]) if ca.get(key) is not None else None

  return {"flops": get("flops"), "bytes_accessed": get("bytes accessed"),
          "transcendentals": get("transcendentals")}


def matmul_ceiling(device, *, n: int = 2048, warmup_s: float = 2.0,
                   calls: int = 10) -> dict[str, Any]:
  """GFLOP/s of a jitted fp32 n x n jnp.dot (median of `calls`)."""
  rng = np.random.default_rng(0)
  a = jax.device_put(rng.standard_normal((n, n), np.float32), device)
  b = jax.device_put(rng.standard_normal((n, n), np.float32), device)
  f = jax.jit(jnp.dot)
  t = time_calls(lambda: f(a, b), min_reps=calls, max_reps=calls,
                 target_s=0.0, warmup_calls=2, warmup_s=warmup_s)
  flop = 2.0 * n ** 3
  g = [flop / s / 1e9 for s in t.seconds]
  return {"what": f"jitted jnp.dot, float32 {n}x{n} (default precision)",
          "n": n, "calls": calls, "warmup_s": warmup_s,
          "warmup_calls": t.warmup_calls,
          "gflops": _stats(g), "median_gflops": float(statistics.median(g)),
          "loadavg_1m": _loadavg()}


# ---------------------------------------------------------------------------
# Optimized-HLO statistics.

_ELEMENTWISE = frozenset((
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "select",
    "compare", "round-nearest-even", "round-nearest-afz", "clamp", "negate",
    "abs", "exponential", "log", "convert", "and", "or", "not", "xor", "sqrt",
    "rsqrt", "tanh", "power", "sign", "floor", "ceil", "exponential-minus-one",
    "log-plus-one", "remainder", "is-finite", "logistic", "cbrt"))
# Instructions that are no kernel of their own.
_FREE = frozenset(("parameter", "constant", "get-tuple-element", "tuple",
                   "bitcast", "after-all", "opt-barrier"))
_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def _split_shape(rest: str) -> str:
  """Drops the leading result shape of an HLO instruction's right side."""
  rest = rest.lstrip()
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[i + 1:].lstrip()
    return ""
  i = rest.find(" ")
  return rest[i + 1:].lstrip() if i >= 0 else ""


def parse_hlo(text: str) -> dict[str, dict]:
  """Optimized-HLO text -> {computation: {"entry", "instrs": [...]}}.

  Each instruction is {"name", "opcode", "shape" (layouts dropped), "calls",
  "kind", "to_apply", "op_name", "target"}.
  """
  comps: dict[str, dict] = {}
  cur = None
  for line in text.splitlines():
    if not line.strip():
      continue
    if not line.startswith(" ") and line.rstrip().endswith("{"):
      m = _HEADER_RE.match(line)
      if m and not line.startswith("HloModule"):
        cur = {"entry": bool(m.group(1)), "instrs": []}
        comps[m.group(2)] = cur
      continue
    if line.startswith("}"):
      cur = None
      continue
    if cur is None:
      continue
    m = _INSTR_RE.match(line)
    if not m:
      continue
    body = _split_shape(m.group(2))
    shape = m.group(2)[:len(m.group(2)) - len(body)].strip()
    op = re.match(r"([\w\-]+)\(", body)
    if not op:
      continue

    def attr(pattern, body=body):
      a = re.search(pattern, body)
      return a.group(1) if a else None

    cur["instrs"].append({
        "name": m.group(1), "opcode": op.group(1),
        "shape": re.sub(r"\{[^}]*\}", "", shape),
        "calls": attr(r"calls=%?([\w.\-]+)"),
        "kind": attr(r"kind=(k\w+)"),
        "to_apply": attr(r"to_apply=%?([\w.\-]+)"),
        "op_name": attr(r'op_name="([^"]*)"'),
        "target": attr(r'custom_call_target="([^"]*)"'),
    })
  return comps


def _fused_ops(comps: dict, name: str | None, seen=None) -> collections.Counter:
  """Opcodes inside fused computation `name` (nested fusions included)."""
  out = collections.Counter()
  if not name or name not in comps:
    return out
  seen = set() if seen is None else seen
  if name in seen:
    return out
  seen.add(name)
  for ins in comps[name]["instrs"]:
    out[ins["opcode"]] += 1
    if ins["opcode"] == "fusion":
      out.update(_fused_ops(comps, ins["calls"], seen))
  return out


def classify_instr(ins: dict, comps: dict) -> str:
  """A top-level instruction's category for the time breakdown."""
  op = ins["opcode"]
  name = ins["name"]
  inner = (_fused_ops(comps, ins["calls"]) if op == "fusion"
           else collections.Counter({op: 1}))
  lib = ""
  for prefix in ("ynn", "xnn", "onednn"):
    if name.startswith(prefix) or (ins["target"] or "").lower().startswith(
        prefix):
      lib = prefix
  if inner["convolution"]:
    return f"convolution ({lib or 'eigen/xla'})"
  if inner["dot"]:
    return f"dot ({lib or 'eigen/xla'})"
  if op == "custom-call":
    return f"custom-call {ins['target']}"
  if op in ("copy", "transpose") or (
      op == "fusion" and ("transpose" in name or "copy" in name)
      and not inner["reduce"]):
    return "transpose/copy"
  via = f" ({lib})" if lib else ""
  if inner["reduce"] or inner["reduce-window"]:
    return f"reduce fusion (BN stats, grads of steps/biases, ...){via}"
  if inner["round-nearest-even"] or inner["round-nearest-afz"]:
    return f"elementwise fusion with fake-quant (round){via}"
  if op == "fusion" or op in _ELEMENTWISE:
    return f"elementwise fusion/op{via}"
  return f"other ({op})"


def _op_name(ins: dict, comps: dict) -> str | None:
  """The instruction's op_name, else the first one inside its fusion."""
  if ins["op_name"] or ins["opcode"] != "fusion":
    return ins["op_name"]
  for inner in comps.get(ins["calls"], {"instrs": []})["instrs"]:
    if inner["op_name"]:
      return inner["op_name"]
  return None


def _phase(op_name: str | None) -> str:
  if not op_name:
    return "unattributed"
  if "transpose(jvp(" in op_name:
    return "student backward"
  if "jvp(" in op_name:
    return "student forward"
  return "other (teacher fwd, quantizer fwd, optimizer)"


def _top_level(comps: dict) -> list[dict]:
  """Instructions of the computations that run as thunks (not fused ones)."""
  fused, applied = set(), set()
  for c in comps.values():
    for ins in c["instrs"]:
      if ins["opcode"] == "fusion" and ins["calls"]:
        fused.add(ins["calls"])
      if ins["to_apply"] and ins["opcode"] != "call":
        applied.add(ins["to_apply"])
  out = []
  for name, c in comps.items():
    if name in fused or name in applied:
      continue
    out.extend(c["instrs"])
  return out


def hlo_stats(text: str) -> dict[str, Any]:
  """Counts fusions, convolutions and standalone elementwise ops.

  "Top level" means the instructions that run as their own thunk (entry and
  while/call bodies, not the bodies of fusions or reducers). A fake-quant op
  (round) counts as fused when it sits inside a fusion.
  """
  comps = parse_hlo(text)
  top = _top_level(comps)
  kernels = [i for i in top if i["opcode"] not in _FREE]
  fusion_kinds = collections.Counter(i["kind"] for i in top
                                     if i["opcode"] == "fusion")
  prefixes = collections.Counter(re.sub(r"[.\d]+$", "", i["name"])
                                 for i in top if i["opcode"] == "fusion")
  standalone = collections.Counter(i["opcode"] for i in top
                                   if i["opcode"] in _ELEMENTWISE)
  top_ops = collections.Counter(i["opcode"] for i in top)
  all_ops = collections.Counter(i["opcode"] for c in comps.values()
                                for i in c["instrs"])
  categories = collections.Counter(classify_instr(i, comps) for i in kernels)
  rounds_all = all_ops["round-nearest-even"] + all_ops["round-nearest-afz"]
  rounds_top = top_ops["round-nearest-even"] + top_ops["round-nearest-afz"]
  return {
      "kernels": len(kernels),
      "fusions": int(sum(fusion_kinds.values())),
      "fusion_kinds": dict(fusion_kinds),
      "fusion_name_prefixes": dict(prefixes.most_common(12)),
      "convolutions_standalone": top_ops["convolution"],
      "convolutions_total": all_ops["convolution"],
      "dots_total": all_ops["dot"],
      "standalone_elementwise": int(sum(standalone.values())),
      "standalone_elementwise_by_op": dict(standalone.most_common(10)),
      "copies_transposes_standalone": top_ops["copy"] + top_ops["transpose"],
      "round_ops_total": rounds_all,
      "round_ops_fused": rounds_all - rounds_top,
      "custom_calls": dict(collections.Counter(
          i["target"] for i in top if i["opcode"] == "custom-call")),
      "kernel_categories": dict(categories.most_common()),
  }


# ---------------------------------------------------------------------------
# Models, variables and batches.


def _quant(bits: str) -> QuantConfig:
  w, a = quant_config.parse_bits(bits)
  return QuantConfig(weight_bits=w, act_bits=a)


class Context:
  """Per-run caches: models, FP variables, score functions, batches."""

  def __init__(self, device):
    self.device = device
    self.mesh = sharding_lib.make_mesh([device])
    self._teacher_vars = {}
    self._score_fns = {}
    self._student_vars = {}

  def models(self, model: str, block: str, bits: str):
    qc = _quant(bits)
    student = models.build_model(model, num_classes=NUM_CLASSES, quant=qc,
                                 block=block)
    teacher = models.build_model(model, num_classes=NUM_CLASSES,
                                 quant=qc.as_float(), block=block)
    return student, teacher

  def teacher_vars(self, model: str, block: str):
    """FP variables (host numpy) from the model's initialisers, cached."""
    key = (model, block)
    if key not in self._teacher_vars:
      _, teacher = self.models(model, block, "fp")
      x = jnp.zeros((2, *IMAGE_SHAPE), jnp.float32)
      v = jax.jit(lambda x: teacher.init(jax.random.key(0), x, train=False)
                  )(x)
      # Kept on host: every case gets fresh device buffers, since a train
      # step donates (deletes) the ones it is given.
      self._teacher_vars[key] = jax.tree.map(np.asarray, v)
    return self._teacher_vars[key]

  def student_vars(self, model: str, block: str, bits: str):
    """The teacher's weights plus LSQ step sizes (host numpy), cached.

    Weight steps are LSQ's init from the kernels; activation steps a fixed
    0.05 (training calibrates them on data): fake quantization runs in fp32
    whatever the values, so they do not change the cost.
    """
    key = (model, block, bits)
    if key in self._student_vars:
      return self._student_vars[key]
    teacher_vars = self.teacher_vars(model, block)
    if bits == "fp":
      return teacher_vars
    student, _ = self.models(model, block, bits)
    qc = _quant(bits)
    shapes = jax.eval_shape(
        lambda: student.init(jax.random.key(0),
                             jnp.zeros((2, *IMAGE_SHAPE)), train=False))
    host_t = teacher_vars
    params = models.transfer_params(host_t["params"], shapes["params"])
    flat = _flatten(params)
    for path, leaf in list(flat.items()):
      if not isinstance(leaf, jax.ShapeDtypeStruct):
        continue
      if path[-1] == "w_step":
        kernel = flat[path[:-1] + ("kernel",)]
        flat[path] = np.asarray(lsq.init_step(jnp.asarray(kernel),
                                              qc.weight_bits, True),
                                np.float32).reshape(leaf.shape)
      elif path[-1] == "step":
        flat[path] = np.full(leaf.shape, 0.05, np.float32)
      else:
        raise ValueError(f"student parameter {'/'.join(path)} has no "
                         "teacher counterpart and is no LSQ step")
    v = {"params": _unflatten(flat), "batch_stats": host_t["batch_stats"]}
    self._student_vars[key] = v
    return v

  def score_fn(self, model: str, block: str, bits: str):
    """One make_score_fn per model, reused so its jit compiles once."""
    key = (model, block, bits)
    if key not in self._score_fns:
      student, _ = self.models(model, block, bits)
      self._score_fns[key] = scores_lib.make_score_fn(
          lambda v, x: student.apply(v, x, train=False, features=True))
    return self._score_fns[key]


def _flatten(tree) -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _unflatten(flat: dict) -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  return flax.traverse_util.unflatten_dict(flat)


def random_batch(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking CIFAR-shaped images, labels and indices (host)."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.standard_normal((batch, *IMAGE_SHAPE), np.float32),
      "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
      "index": np.arange(batch, dtype=np.int32),
  }


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _score_chunk(batch: int, mesh, with_probs: bool, seed: int = 0):
  """A [1, B, ...] chunk placed as score_dataset places it."""
  b = random_batch(batch, seed)
  b["mask"] = np.ones((batch,), bool)
  if with_probs:
    rng = np.random.default_rng(seed + 1)
    b["teacher_probs"] = _softmax(rng.standard_normal((batch, NUM_CLASSES)))
  shard = NamedSharding(mesh, P(None, sharding_lib.DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(shard, v[None])
          for k, v in b.items()}


# ---------------------------------------------------------------------------
# Cases.


def _finish_case(case: Case, timing: Timing, lower_s: float,
                 compile_s: float, cost: dict, ceiling: float | None,
                 extra: dict) -> dict[str, Any]:
  """The JSON record of a timed case (throughputs, FLOPs, reference)."""
  ips = [case.batch / s for s in timing.seconds]
  step = _stats(timing.seconds)
  gflop_img = (cost["flops"] / case.batch / 1e9
               if cost["flops"] else None)
  achieved = (gflop_img * statistics.median(ips)
              if gflop_img is not None else None)
  ref, ref_label = reference_for(case)
  analytic = analytic_gflop_per_image(case)
  rec = {
      "name": case.name, "kind": case.kind, "model": case.model,
      "block": case.block, "bits": case.bits, "loss": case.loss,
      "teacher": case.teacher, "batch": case.batch,
      "reps": len(timing.seconds), "warmup_calls": timing.warmup_calls,
      "images_per_s": _stats(ips),
      "step_s": step,
      "lower_s": lower_s, "compile_s": compile_s,
      "gflops_per_image": gflop_img,
      "analytic_gflops_per_image": analytic,
      "achieved_gflops": achieved,
      "achieved_gflops_analytic": (analytic * statistics.median(ips)
                                   if analytic else None),
      "pct_of_ceiling": (100.0 * achieved / ceiling
                         if achieved is not None and ceiling else None),
      # The reference's "% of torch.mm" uses the analytic FLOPs.
      "pct_of_ceiling_analytic": (
          100.0 * analytic * statistics.median(ips) / ceiling
          if analytic and ceiling else None),
      "bytes_accessed_per_image": (cost["bytes_accessed"] / case.batch
                                   if cost["bytes_accessed"] else None),
      "reference_images_per_s": ref,
      "reference_case": ref_label,
      "ratio_to_reference": (statistics.median(ips) / ref if ref else None),
      "cpu_s_per_call": float(statistics.median(timing.cpu_seconds)),
      "cores_busy": float(statistics.median(
          [c / s for c, s in zip(timing.cpu_seconds, timing.seconds)])),
      "minor_faults_per_call": int(statistics.median(timing.minor_faults)),
      "loadavg_1m": _loadavg(),
  }
  rec.update(extra)
  return rec


def reference_for(case: Case) -> tuple[float | None, str | None]:
  """The reference img/s for the same model, bits and block (else None)."""
  if case.model != REFERENCE["model"]:
    return None, None
  if case.kind == "train":
    ref = REFERENCE["train"].get((case.block, case.bits, case.loss))
    if ref is None:
      return None, None
    what = ("FP ResNet18 train step (CE)" if case.bits == "fp" else
            f"QAT step {case.bits.upper()} official block, "
            + ("KD from frozen FP ResNet18" if case.loss == "kd"
               else "plain CE"))
    return ref, what
  # Scoring: their student + FP model forward. Cached (our real path) vs
  # their code as run; both forwards vs their inference-mode figure.
  if case.teacher == "cached":
    return REFERENCE["score_as_run"], ("ACS scoring as their code runs it "
                                       "(W4A4 + FP model, autograd on)")
  return REFERENCE["score_no_grad"], ("ACS scoring, W4A4 + FP model, "
                                      "no_grad=True")


def analytic_gflop_per_image(case: Case) -> float | None:
  """The reference's analytic ResNet-18 FLOPs for this case, per image."""
  if case.model != "resnet18":
    return None
  fwd, train = (REFERENCE["gflop_per_image_forward"],
                REFERENCE["gflop_per_image_train"])
  if case.kind == "train":
    return train + (fwd if case.loss != "ce" else 0.0)
  return fwd * (2 if case.teacher == "forward" else 1)


@dataclasses.dataclass
class Prepared:
  """A case's jitted function, its arguments and a call that threads state."""
  jitted: Any
  args: tuple
  call: Callable[[], Any]


def prepare_train(case: Case, ctx: Context) -> Prepared:
  """steps.train_step jitted exactly as train.Runner does (one device)."""
  student, teacher = ctx.models(case.model, case.block, case.bits)
  svars = ctx.student_vars(case.model, case.block, case.bits)
  tvars = (jax.device_put(ctx.teacher_vars(case.model, case.block),
                          ctx.device) if case.loss != "ce" else None)
  c = config_lib.get_base_config().train
  quantized = case.bits != "fp"
  # Steps per epoch only shape the LR schedule, not the cost.
  tx, schedule = steps.make_optimizer(
      c, 39, step_size_lr_mult=c.step_size_lr_mult if quantized else 1.0)
  state = steps.TrainState.create(apply_fn=student.apply,
                                  params=svars["params"], tx=tx,
                                  batch_stats=svars["batch_stats"])
  state = jax.device_put(state, ctx.device)
  jitted = jax.jit(
      functools.partial(steps.train_step, apply_fn=student.apply,
                        loss=case.loss, kd_alpha=c.kd_alpha,
                        teacher_apply_fn=teacher.apply,
                        lr_schedule=schedule),
      donate_argnums=(0,))
  batch = jax.device_put(random_batch(case.batch), ctx.device)
  rng = jax.random.key(1)
  holder = [state]

  def call():
    # The state is donated: always pass the one the last step returned.
    holder[0], metrics = jitted(holder[0], batch, rng, tvars)
    return holder[0], metrics

  return Prepared(jitted, (state, batch, rng, tvars), call)


def prepare_score(case: Case, ctx: Context) -> Prepared:
  """The selection's score step: cached teacher, or both forwards."""
  student, teacher = ctx.models(case.model, case.block, case.bits)
  svars = ctx.student_vars(case.model, case.block, case.bits)
  repl = sharding_lib.replicated(ctx.mesh)
  if case.teacher == "cached":
    score_fn = ctx.score_fn(case.model, case.block, case.bits)
    # The very function score_dataset calls (lru-cached per score_fn), so
    # the selection pass reuses this compile.
    jitted = scores_lib._jitted_scorer(  # pylint: disable=protected-access
        score_fn, ("evs", "ds"))
    args = (jax.device_put(svars, repl),
            _score_chunk(case.batch, ctx.mesh, with_probs=True))
  else:
    tvars = ctx.teacher_vars(case.model, case.block)

    def one(sv, tv, b):
      logits, _ = student.apply(sv, b["image"], train=False, features=True)
      t_logits = teacher.apply(tv, b["image"], train=False)
      return {"evs": scores_lib.error_vector_score(logits, b["label"]),
              "ds": scores_lib.disagreement_score(logits, t_logits),
              "index": b["index"], "mask": b["mask"]}

    jitted = jax.jit(jax.vmap(one, in_axes=(None, None, 0)))
    args = (jax.device_put(svars, repl), jax.device_put(tvars, repl),
            _score_chunk(case.batch, ctx.mesh, with_probs=False))
  return Prepared(jitted, args, lambda: jitted(*args))


def prepare(case: Case, ctx: Context) -> Prepared:
  return (prepare_train if case.kind == "train" else prepare_score)(case, ctx)


def compile_prepared(prep: Prepared) -> tuple[Any, float, float]:
  """Lowers and compiles ahead of time; the jit cache keeps the result.

  Returns (compiled, lower_s, compile_s).
  """
  t0 = time.perf_counter()
  lowered = prep.jitted.lower(*prep.args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t1


def run_case(case: Case, ctx: Context, reps: dict, ceiling: float | None,
             with_hlo: bool = True) -> tuple[dict, Prepared, Any]:
  """Compiles, warms up and times one case; returns (record, prep, exe)."""
  prep = prepare(case, ctx)
  compiled, lower_s, compile_s = compile_prepared(prep)
  timing = time_calls(prep.call, **reps)
  extra = {"hlo": hlo_stats(compiled.as_text()) if with_hlo else None}
  rec = _finish_case(case, timing, lower_s, compile_s, cost_of(compiled),
                     ceiling, extra)
  return rec, prep, compiled


# ---------------------------------------------------------------------------
# Selection.


def _array_batches(n: int, batch: int, images: np.ndarray,
                   labels: np.ndarray):
  """Eval-iterator-shaped numpy batches (padded tail, mask)."""
  for start in range(0, n, batch):
    idx = np.arange(start, start + batch)
    mask = idx < n
    yield {"image": images, "label": labels[np.where(mask, idx, 0)],
           "index": np.where(mask, idx, -1).astype(np.int64), "mask": mask}


def _pipeline_batches(n: int, batch: int, labels: np.ndarray, seed: int):
  """The real eval iterator (tf.data) over an in-memory uint8 dataset."""
  env.hide_gpus_from_tensorflow()
  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets
  from acs_jax.data import input_pipeline
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
  xt = x[:batch]
  ds = datasets.Dataset(
      name="bench", num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE,
      mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7), num_train=n,
      num_test=len(xt), class_names=tuple(str(i) for i in range(NUM_CLASSES)),
      augment="none", x_train=x, y_train=labels[:n].astype(np.int32),
      x_test=xt, y_test=labels[:len(xt)].astype(np.int32),
      y_train_clean=labels[:n].astype(np.int32))
  return lambda: input_pipeline.make_eval_iterator(ds, "train",
                                                   batch_size=batch)


def run_selection(ctx: Context, *, model: str, block: str, bits: str,
                  num_samples: int, score_batch: int, fraction: float,
                  mode: str, sub_batches: int, input_kind: str,
                  train_rec: dict | None, score_rec: dict | None,
                  seed: int = 0) -> dict[str, Any]:
  """One ACS selection over `num_samples` and its cost in training epochs.

  mode "full" scores every sample; "extrapolate" times `sub_batches` batches
  and scales to the whole set; "auto" picks "full" when the score step
  measured just before says the pass takes under 60 s.
  """
  n_batches = math.ceil(num_samples / score_batch)
  if mode == "auto":
    est = (n_batches * score_rec["step_s"]["median"] if score_rec else None)
    mode = "full" if est is not None and est < 60.0 else "extrapolate"
  n_run = num_samples if mode == "full" else min(
      num_samples, sub_batches * score_batch)
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_samples) % NUM_CLASSES).astype(
      np.int32)
  teacher_probs = _softmax(rng.standard_normal((num_samples, NUM_CLASSES)))
  score_fn = ctx.score_fn(model, block, bits)
  svars = ctx.student_vars(model, block, bits)
  if input_kind == "pipeline":
    make_batches = _pipeline_batches(n_run, score_batch, labels, seed)
  else:
    images = random_batch(score_batch, seed)["image"]
    make_batches = functools.partial(_array_batches, n_run, score_batch,
                                     images, labels)
  # Warm-up (compiles only if the score case did not run): one batch.
  t0 = time.perf_counter()
  scores_lib.score_dataset(
      score_fn, svars, _array_batches(score_batch, score_batch,
                                      random_batch(score_batch)["image"],
                                      labels),
      score_batch, ctx.mesh, teacher_probs=teacher_probs[:score_batch])
  warm_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = scores_lib.score_dataset(score_fn, svars, make_batches(), n_run,
                                 ctx.mesh,
                                 teacher_probs=teacher_probs[:n_run])
  run_s = time.perf_counter() - t0
  run_batches = math.ceil(n_run / score_batch)
  score_s = run_s * n_batches / run_batches
  evs, ds = out["evs"], out["ds"]
  if len(evs) < num_samples:  # selection cost depends on N only
    evs = np.resize(evs, num_samples)
    ds = np.resize(ds, num_samples)
  t0 = time.perf_counter()
  idx, _ = selector_lib.acs_select(
      evs, ds, labels, epoch=10, total_epochs=200, fraction=fraction,
      schedule="cosine", balance=True)
  select_s = time.perf_counter() - t0
  total = score_s + select_s
  rec = {
      "model": model, "block": block, "bits": bits,
      "num_samples": num_samples, "score_batch": score_batch,
      "teacher": "cached (score_dataset with teacher_probs)",
      "input": ("tf.data eval iterator (make_eval_iterator) over in-memory "
                "uint8 data" if input_kind == "pipeline" else
                "numpy batches (no input pipeline)"),
      "scoring_mode": mode,
      "extrapolated": mode != "full",
      "scored_samples": n_run, "scored_batches": run_batches,
      "total_batches": n_batches,
      "scoring_measured_s": run_s,
      "scoring_s": score_s,
      "scoring_images_per_s": num_samples / score_s,
      "warmup_s": warm_s,
      "selection_s": select_s,
      "total_s": total,
      "coreset_size": int(len(idx)),
      "fraction": fraction,
      "note": ("the teacher softmax cache is computed once per run (a "
               "teacher forward over the data), not per selection"),
  }
  if mode != "full":
    rec["extrapolation"] = (f"timed {run_batches} batches of {score_batch} "
                            f"and scaled to {n_batches} batches")
  if train_rec is not None:
    b = train_rec["batch"]
    step_s = train_rec["step_s"]["median"]
    core_steps = steps.num_steps(len(idx), b)
    full_steps = steps.num_steps(num_samples, b)
    rec.update({
        "train_case": train_rec["name"], "train_batch": b,
        "train_step_s": step_s,
        "coreset_epoch_steps": core_steps,
        "coreset_epoch_s": core_steps * step_s,
        "full_epoch_steps": full_steps,
        "full_epoch_s": full_steps * step_s,
        "ratio_to_coreset_epoch": total / (core_steps * step_s),
        "ratio_to_full_epoch": total / (full_steps * step_s),
    })
  return rec


# ---------------------------------------------------------------------------
# Targets and report.


def _find(cases: list[dict], **kw) -> dict | None:
  for c in cases:
    if all(c.get(k) == v for k, v in kw.items()):
      return c
  return None


def evaluate_targets(cases: list[dict], selection: dict | None
                     ) -> list[dict[str, Any]]:
  """PASS / MISS / NOT_RUN for each target of the issue (measured only)."""
  out = []
  kd = _find(cases, kind="train", model="resnet18", block="official",
             bits="w2a2", loss="kd")
  t = TARGETS["qat_kd_step"]
  ratio = kd["ratio_to_reference"] if kd else None
  out.append({
      "name": "qat_kd_step", "what": t["what"], "case": kd and kd["name"],
      "measured_ratio": ratio, "threshold": t["threshold"], "aim": t["aim"],
      "status": _status(ratio, t["threshold"], higher=True),
      "aim_status": _status(ratio, t["aim"], higher=True),
      "note": (None if not kd or kd["batch"] == REFERENCE["batch"] else
               f"measured at batch {kd['batch']}, reference at 128"),
  })
  t = TARGETS["score_pass"]
  sc = (_find(cases, kind="score", model="resnet18", block="official",
              bits="w4a4", teacher="cached")
        or _find(cases, kind="score", model="resnet18", teacher="cached"))
  ratio = (sc["images_per_s"]["median"] / REFERENCE["score_as_run"]
           if sc else None)
  out.append({
      "name": "score_pass", "what": t["what"], "case": sc and sc["name"],
      "measured_ratio": ratio, "threshold": t["threshold"],
      "status": _status(ratio, t["threshold"], higher=True),
      "note": (None if not sc or sc["batch"] == 256 else
               f"measured at batch {sc['batch']}, target at 256")})
  t = TARGETS["reselection"]
  ratio = (selection or {}).get("ratio_to_coreset_epoch")
  out.append({
      "name": "reselection", "what": t["what"],
      "case": selection and selection.get("train_case"),
      "measured_ratio": ratio, "threshold": t["threshold"],
      "status": _status(ratio, t["threshold"], higher=False),
      "note": ("scoring pass extrapolated" if selection
               and selection.get("extrapolated") else None)})
  return out


def _status(value, threshold, higher: bool) -> str:
  if value is None:
    return "NOT_RUN"
  ok = value >= threshold if higher else value <= threshold
  return "PASS" if ok else "MISS"


def _fmt(x, spec=".1f", none="-") -> str:
  return none if x is None else format(x, spec)


def format_report(result: dict) -> str:
  """The printed table."""
  lines = []
  m = result["machine"]
  lines.append(f"acs_jax.bench ({result['mode']}) on {m['device_kind']} "
               f"[{m['platform']}], {m['cpu_count']} CPUs, jax "
               f"{m['jax_version']}, XLA_FLAGS={m['xla_flags']!r}")
  ceil = result["ceiling"]
  lines.append(f"matmul ceiling: {ceil['median_gflops']:.1f} GFLOP/s "
               f"(fp32 {ceil['n']}^2, median of {ceil['calls']}); reference "
               f"torch.mm {REFERENCE['matmul_gflops']} GFLOP/s")
  lines.append(
      f"reference analytic ResNet-18 FLOPs: "
      f"{REFERENCE['gflop_per_image_forward']} GFLOP/image forward, "
      f"{REFERENCE['gflop_per_image_train']} forward+backward, (anal) column;"
      " GF/img is XLA's count, which skips the multiply-adds on zero padding"
      " (~13% fewer for ResNet-18)")
  hdr = (f"{'case':<46} {'img/s':>8} {'[min-max]':>15} {'reps':>4} "
         f"{'step s':>7} {'comp s':>6} {'GF/img':>6} {'(anal)':>6} "
         f"{'GF/s':>6} {'%ceil':>5} {'ref':>5} {'ratio':>6}")
  lines.append(hdr)
  lines.append("-" * len(hdr))
  for c in sorted(result["cases"], key=lambda c: c["name"]):
    ips = c["images_per_s"]
    lines.append(
        f"{c['name']:<46} {ips['median']:8.1f} "
        f"{'[' + _fmt(ips['min']) + '-' + _fmt(ips['max']) + ']':>15} "
        f"{c['reps']:4d} {c['step_s']['median']:7.3f} "
        f"{c['compile_s']:6.1f} {_fmt(c['gflops_per_image'], '.3f'):>6} "
        f"{_fmt(c['analytic_gflops_per_image'], '.3f'):>6} "
        f"{_fmt(c['achieved_gflops']):>6} "
        f"{_fmt(c['pct_of_ceiling'], '.0f'):>5} "
        f"{_fmt(c['reference_images_per_s']):>5} "
        f"{_fmt(c['ratio_to_reference'], '.2f'):>6}")
  for s in result.get("skipped", []):
    lines.append(f"{s['name']:<46} skipped: {s['reason']}")
  sel = result.get("selection")
  if sel:
    lines.append("")
    lines.append(
        f"selection ({sel['model']} {sel['block']} {sel['bits']}, "
        f"{sel['num_samples']} samples, {sel['scoring_mode']}): scoring "
        f"{sel['scoring_s']:.1f} s ({sel['scoring_images_per_s']:.1f} img/s) "
        f"+ acs_select {sel['selection_s']:.3f} s = {sel['total_s']:.1f} s")
    if "coreset_epoch_s" in sel:
      lines.append(
          f"  = {sel['ratio_to_coreset_epoch']:.2f} epochs on the "
          f"{sel['coreset_size']}-sample coreset ({sel['coreset_epoch_s']:.1f}"
          f" s) = {sel['ratio_to_full_epoch']:.3f} full-data epochs "
          f"({sel['full_epoch_s']:.1f} s), at {sel['train_case']}")
  lines.append("")
  for t in result["targets"]:
    extra = f", aim {t['aim']}x: {t['aim_status']}" if "aim" in t else ""
    cmp_ = "<=" if t["name"] == "reselection" else ">="
    note = f" [{t['note']}]" if t.get("note") else ""
    lines.append(f"target {t['name']:<12} {t['status']:<7} measured "
                 f"{_fmt(t['measured_ratio'], '.2f')} {cmp_} "
                 f"{t['threshold']}{extra}  ({t['what']}){note}")
  lines.append(f"wall time {result['wall_s']:.0f} s")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Profiling: where the time of one jitted call goes.


def _trace_events(log_dir: str) -> list[dict]:
  paths = []
  for root, _, files in os.walk(log_dir):
    paths += [os.path.join(root, f) for f in files
              if f.endswith("trace.json.gz")]
  if not paths:
    return []
  # perfetto_trace.json.gz and <host>.trace.json.gz hold the same events.
  with gzip.open(sorted(paths)[0]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def profile_case(case: Case, ctx: Context, *, calls: int = 2,
                 top: int = 15) -> dict[str, Any]:
  """Per-kernel (thunk) time of a case from a jax.profiler trace.

  Joins the trace's per-thunk events with the optimized HLO to sum time by
  category (convolution library, transpose/copy, reductions, elementwise and
  fake-quant fusions) and by phase (student forward / backward / other, from
  the ops' metadata). XLA may run independent kernels concurrently, so the
  kernel seconds can exceed the wall time. XLA's own (Eigen) convolutions run
  asynchronously on the intra-op pool and their trace events cover only the
  launch: with those, compare wall times rather than kernel seconds.
  """
  reps = dict(min_reps=1, max_reps=1, target_s=0.0, warmup_calls=1)
  rec, prep, compiled = run_case(case, ctx, reps, None, with_hlo=False)
  text = compiled.as_text()
  comps = parse_hlo(text)
  by_name = {i["name"]: i for i in _top_level(comps)}
  log_dir = tempfile.mkdtemp(prefix="acs_bench_trace_")
  t0 = time.perf_counter()
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(prep.call())
  wall = (time.perf_counter() - t0) / calls
  per_kernel = collections.Counter()
  for e in _trace_events(log_dir):
    if "dur" in e and e.get("name") in by_name:
      per_kernel[e["name"]] += e["dur"] / 1e6 / calls
  by_cat, by_phase = collections.Counter(), collections.Counter()
  for name, s in per_kernel.items():
    by_cat[classify_instr(by_name[name], comps)] += s
    by_phase[_phase(_op_name(by_name[name], comps))] += s
  total = sum(per_kernel.values())

  def pct(d):
    return {k: {"s": v, "pct": 100.0 * v / total if total else None}
            for k, v in d.most_common()}

  return {
      "case": case.name, "calls": calls,
      "wall_s_per_call_traced": wall,
      "kernel_s_per_call": total,
      "kernels_seen": len(per_kernel),
      "by_category": pct(by_cat),
      "by_phase": pct(by_phase),
      "top_kernels": [
          {"name": n, "s": s, "category": classify_instr(by_name[n], comps),
           "shape": by_name[n]["shape"],
           "op_name": _op_name(by_name[n], comps)}
          for n, s in per_kernel.most_common(top)],
      "hlo": hlo_stats(text),
      "untraced_step_s": rec["step_s"]["median"],
      "trace_dir": log_dir,
  }


def format_profile(p: dict) -> str:
  lines = [f"profile of {p['case']}: {p['kernel_s_per_call']:.3f} s of "
           f"kernels per call ({p['kernels_seen']} kernels), wall "
           f"{p['wall_s_per_call_traced']:.3f} s traced / "
           f"{p['untraced_step_s']:.3f} s untraced"]
  for title, key in (("by category", "by_category"), ("by phase",
                                                       "by_phase")):
    lines.append(f"  {title}:")
    for k, v in p[key].items():
      lines.append(f"    {v['s']:8.3f} s {_fmt(v['pct'], '5.1f')}%  {k}")
  lines.append("  top kernels:")
  for k in p["top_kernels"]:
    lines.append(f"    {k['s']:8.3f} s  {k['name']:<28} {k['shape']:<22} "
                 f"{k['category']}")
  h = p["hlo"]
  lines.append(
      f"  HLO: {h['kernels']} kernels, {h['fusions']} fusions "
      f"{h['fusion_kinds']}, convolutions {h['convolutions_total']} "
      f"({h['convolutions_standalone']} standalone), standalone elementwise "
      f"{h['standalone_elementwise']}, round ops fused "
      f"{h['round_ops_fused']}/{h['round_ops_total']}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Levers: one subprocess per setting (XLA flags and malloc are process-wide).

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """glibc: serve big buffers from the heap and never hand memory back.

  XLA:CPU allocates every step's buffers afresh. glibc mmaps allocations
  above its mmap threshold (at most 32 MiB) and unmaps them on free, so each
  step faults in and zeroes fresh pages. With mmap off and trimming off,
  freed memory is reused. One arena: XLA's pool threads would otherwise
  allocate from per-thread arenas, whose heaps are capped at 64 MiB and
  handed back with madvise. Call before any thread starts. Returns False
  where mallopt is unavailable.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  ok = libc.mallopt(M_ARENA_MAX, 1) == 1
  ok &= libc.mallopt(M_MMAP_MAX, 0) == 1
  ok &= libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
  return bool(ok)


_TRIM_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def default_levers() -> list[dict[str, Any]]:
  """Each lever: id, name and its XLA flags / env / cpus / batch / mallopt."""
  return [
      {"id": "baseline", "name": "baseline (acs_jax's XLA defaults)"},
      {"id": "xladefaults", "name": "XLA's own defaults (YNNPACK convs on)",
       "env": {env.XLA_DEFAULTS_ENV: "0"}, "xla_defaults": False},
      {"id": "eigen1", "name": "xla_cpu_multi_thread_eigen=false",
       "xla_flags": "--xla_cpu_multi_thread_eigen=false"},
      {"id": "noxnn", "name": "xla_cpu_use_xnnpack=false",
       "xla_flags": "--xla_cpu_use_xnnpack=false"},
      {"id": "onednn", "name": "xla_cpu_use_onednn=true",
       "xla_flags": "--xla_cpu_use_onednn=true"},
      {"id": "sched", "name": "concurrency-optimized scheduler",
       "xla_flags": "--xla_cpu_scheduler_type="
                    "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"},
      {"id": "fastcompile", "name": "opt preset FAST_COMPILE",
       "xla_flags": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE"},
      {"id": "1core", "name": "1 core (intra-op threads = 1)", "cpus": 1},
      {"id": "nommap", "name": "glibc: no mmap + no trim (env)",
       "env": _TRIM_ENV},
      {"id": "mallopt", "name": "glibc: 1 arena, no mmap/trim (mallopt)",
       "mallopt": True},
      {"id": "thp", "name": "glibc: THP for malloc (hugetlb=1)",
       "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}},
      {"id": "arena1", "name": "glibc: 1 arena, no mmap, no trim (env)",
       "env": {"MALLOC_ARENA_MAX": "1", **_TRIM_ENV}},
      {"id": "arena1+thp", "name": "glibc: 1 arena, no mmap/trim, THP (env)",
       "env": {"MALLOC_ARENA_MAX": "1", **_TRIM_ENV,
               "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}},
      {"id": "thp+eigen1", "name": "THP for malloc + single-thread eigen",
       "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
       "xla_flags": "--xla_cpu_multi_thread_eigen=false"},
      {"id": "b64", "name": "batch x0.5 (64 for 128)", "batch_scale": 0.5},
      {"id": "b256", "name": "batch x2 (256 for 128)", "batch_scale": 2.0},
  ]


def run_levers(args, case: Case) -> list[dict[str, Any]]:
  """Runs each lever in a fresh process on `case`; returns their records."""
  out = []
  chosen = [lv for lv in default_levers()
            if not args.lever_names or lv["id"] in args.lever_names]
  # Rounds interleave the levers (ABAB...), so slow drifts of the machine's
  # load hit every lever alike.
  for round_ in range(args.lever_rounds):
    out += [dict(r, round=round_) for r in _run_lever_round(args, case,
                                                            chosen)]
  return out


def _run_lever_round(args, case: Case, chosen: list[dict]) -> list[dict]:
  out = []
  for lever in chosen:
    env_ = dict(os.environ)
    base = env_.get("XLA_FLAGS", "")
    if not lever.get("xla_defaults", True):
      base = env.without_default_xla_flags(base)
    flags = " ".join(x for x in (base, lever.get("xla_flags", "")) if x)
    env_["XLA_FLAGS"] = flags
    env_.update(lever.get("env", {}))
    batch = int(case.batch * lever.get("batch_scale", 1.0))
    cmd = [sys.executable, "-m", "acs_jax.bench", "--lever_child",
           "--lever_case", f"{case.kind}/{case.model}/{case.block}/"
           f"{case.bits}/{case.loss or case.teacher}/{batch}",
           "--min_reps", str(args.min_reps), "--max_reps",
           str(args.max_reps), "--case_seconds", str(args.case_seconds)]
    if lever.get("mallopt"):
      cmd.append("--mallopt")
    cpus = lever.get("cpus")
    if cpus:
      cmd += ["--cpus", str(cpus)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env_, capture_output=True, text=True,
                          check=False)
    rec = {"lever": lever["name"], "lever_id": lever["id"],
           "xla_flags": lever.get("xla_flags"),
           "env": lever.get("env"), "cpus": cpus, "batch": batch,
           "mallopt": bool(lever.get("mallopt")),
           "wall_s": time.perf_counter() - t0, "returncode": proc.returncode}
    line = [l for l in proc.stdout.splitlines() if l.startswith("LEVER ")]
    if proc.returncode == 0 and line:
      rec.update(json.loads(line[-1][len("LEVER "):]))
    else:
      rec["error"] = (proc.stderr or proc.stdout)[-2000:]
    out.append(rec)
    print(format_lever(rec), flush=True)
  return out


def summarize_levers(records: list[dict]) -> list[dict[str, Any]]:
  """Per lever: median over rounds of img/s and CPU s per call, and both
  relative to the baseline (CPU seconds are less sensitive to other load)."""
  groups = collections.defaultdict(list)
  for r in records:
    if "error" not in r:
      groups[r["lever"]].append(r)
  out = []
  base = groups.get("baseline")
  base_ips = (statistics.median(r["images_per_s"]["median"] for r in base)
              if base else None)
  base_cpu = (statistics.median(r["cpu_s_per_call"] / r["batch"]
                                for r in base) if base else None)
  for name, rs in groups.items():
    ips = statistics.median(r["images_per_s"]["median"] for r in rs)
    cpu_img = statistics.median(r["cpu_s_per_call"] / r["batch"] for r in rs)
    out.append({
        "lever": name, "runs": len(rs), "images_per_s": ips,
        "cpu_s_per_image": cpu_img,
        "compile_s": statistics.median(r["compile_s"] for r in rs),
        "speedup_wall": ips / base_ips if base_ips else None,
        "speedup_cpu": base_cpu / cpu_img if base_cpu else None,
    })
  return out


def format_lever_summary(summary: list[dict]) -> list[str]:
  lines = [f"{'lever':<46} {'runs':>4} {'img/s':>7} {'x wall':>6} "
           f"{'cpu s/img':>9} {'x cpu':>6} {'comp s':>6}"]
  for s in summary:
    lines.append(f"{s['lever']:<46} {s['runs']:4d} {s['images_per_s']:7.1f} "
                 f"{_fmt(s['speedup_wall'], '.2f'):>6} "
                 f"{s['cpu_s_per_image']:9.4f} "
                 f"{_fmt(s['speedup_cpu'], '.2f'):>6} {s['compile_s']:6.1f}")
  return lines


def format_lever(r: dict) -> str:
  if "error" in r:
    return f"lever {r['lever']:<46} FAILED: {r['error'][-300:]}"
  return (f"lever {r['lever']:<46} {r['images_per_s']['median']:7.1f} img/s "
          f"[{r['images_per_s']['min']:.1f}-{r['images_per_s']['max']:.1f}] "
          f"b{r['batch']} compile {r['compile_s']:5.1f} s, cpu/call "
          f"{r['cpu_s_per_call']:.2f} s, faults/call "
          f"{r['minor_faults_per_call']}, load {r['loadavg_1m']}")


def _parse_case(spec: str) -> Case:
  """kind/model/block/bits/loss-or-teacher/batch -> Case."""
  kind, model, block, bits, last, batch = spec.split("/")
  if kind == "train":
    return train_case(model, block, bits, last, int(batch))
  return score_case(model, block, bits, last, int(batch))


# ---------------------------------------------------------------------------
# Main.


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m acs_jax.bench",
      description="Speed benchmark of acs_jax (see the module docstring).")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true",
                    help="about a minute: see QUICK_CHANGES")
  mode.add_argument("--smoke", action="store_true",
                    help="seconds, tiny model (tests only)")
  mode.add_argument("--profile", action="store_true",
                    help="trace one case and break its time down")
  mode.add_argument("--levers", action="store_true",
                    help="one subprocess per XLA flag / thread / malloc lever")
  mode.add_argument("--lever_child", action="store_true",
                    help=argparse.SUPPRESS)
  p.add_argument("--out", default=None, help="JSON output file")
  p.add_argument("--model", "--models", dest="models",
                 default="resnet18,resnet20")
  p.add_argument("--blocks", default="basic,official")
  p.add_argument("--bits", default="w2,w2a2,w4a4")
  p.add_argument("--losses", default="kd,ce")
  p.add_argument("--no_fp", dest="fp", action="store_false",
                 help="skip the FP train step")
  p.add_argument("--score_pairs", default=",".join(
      f"{b}:{q}" for b, q in DEFAULT_SCORE_PAIRS),
                 help="block:bits pairs of the score cases")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--score_batch", type=int, default=256)
  p.add_argument("--min_reps", type=int, default=None)
  p.add_argument("--max_reps", type=int, default=None)
  p.add_argument("--case_seconds", type=float, default=None,
                 help="timed seconds per case once min_reps are done")
  p.add_argument("--budget_s", type=float, default=None,
                 help="skip the remaining (lowest-priority) cases once the "
                      "run would exceed this many seconds; 0 = no limit")
  p.add_argument("--ceiling_warmup_s", type=float, default=None)
  p.add_argument("--selection", dest="selection", action="store_true",
                 default=True)
  p.add_argument("--no_selection", dest="selection", action="store_false")
  p.add_argument("--selection_case", default="resnet18/basic/w2",
                 help="model/block/bits of the selection (configs/r18_w2.py)")
  p.add_argument("--selection_samples", type=int, default=50_000)
  p.add_argument("--selection_pass", default=None,
                 choices=("auto", "full", "extrapolate"),
                 help="default: auto (full where the pass takes < 60 s); "
                      "extrapolate in --quick and --smoke")
  p.add_argument("--selection_batches", type=int, default=None,
                 help="batches timed when the pass is extrapolated")
  p.add_argument("--selection_input", default=None,
                 choices=("pipeline", "arrays"))
  p.add_argument("--fraction", type=float, default=0.1)
  p.add_argument("--profile_case",
                 default="train/resnet18/official/w2a2/kd/128",
                 help="kind/model/block/bits/loss-or-teacher/batch")
  p.add_argument("--profile_calls", type=int, default=2)
  p.add_argument("--lever_case", default="train/resnet18/official/w2a2/kd/128")
  p.add_argument("--lever_names", default="",
                 help="comma-separated lever ids (default_levers), e.g. "
                      "baseline,xladefaults; default: all")
  p.add_argument("--lever_rounds", type=int, default=1,
                 help="repeat the chosen levers, interleaved")
  p.add_argument("--mallopt", action="store_true",
                 help="glibc: no mmap / no trim (see keep_freed_memory)")
  p.add_argument("--cpus", type=int, default=0,
                 help="restrict this process to its first N allowed CPUs "
                      "(before XLA starts its threads); 0 = all")
  return p


_DEFAULTS = {
    # mode: min_reps, max_reps, case_seconds, budget_s, ceiling warm-up,
    # selection batches, selection input, selection pass.
    "full": (3, 20, 6.0, 570.0, 2.0, 8, "pipeline", "auto"),
    "quick": (2, 5, 2.0, 0.0, 0.5, 3, "arrays", "extrapolate"),
    "smoke": (1, 1, 0.0, 0.0, 0.0, 2, "arrays", "extrapolate"),
    "levers": (3, 10, 10.0, 0.0, 0.0, 0, "arrays", "auto"),
    "profile": (1, 1, 0.0, 0.0, 0.0, 0, "arrays", "auto"),
}


def _resolve(args) -> str:
  mode = ("quick" if args.quick else "smoke" if args.smoke else
          "profile" if args.profile else
          "levers" if args.levers or args.lever_child else "full")
  d = _DEFAULTS[mode]
  for name, value in zip(("min_reps", "max_reps", "case_seconds", "budget_s",
                          "ceiling_warmup_s", "selection_batches",
                          "selection_input", "selection_pass"), d):
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.models = [m for m in args.models.split(",") if m]
  args.blocks = [b for b in args.blocks.split(",") if b]
  args.bits = [b for b in args.bits.split(",") if b]
  args.losses = [x for x in args.losses.split(",") if x]
  args.score_pairs = [tuple(x.split(":")) for x in args.score_pairs.split(",")
                      if x]
  args.lever_names = [x for x in args.lever_names.split(",") if x]
  return mode


def _lever_child(args, ctx: Context, reps: dict) -> int:
  case = _parse_case(args.lever_case)
  rec, _, _ = run_case(case, ctx, reps, None, with_hlo=False)
  rec["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  rec["cpu_affinity"] = len(os.sched_getaffinity(0))
  print("LEVER " + json.dumps(rec), flush=True)
  return 0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; returns the result dict (also written to --out)."""
  args = build_parser().parse_args(argv)
  mode = _resolve(args)
  if args.cpus:
    # Threads started later (XLA's pools) inherit the main thread's mask.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  if args.mallopt:
    keep_freed_memory()
  env.configure_jax()
  device = jax.devices()[0]
  ctx = Context(device)
  reps = dict(min_reps=args.min_reps, max_reps=args.max_reps,
              target_s=args.case_seconds, warmup_calls=1)
  if args.lever_child:
    _lever_child(args, ctx, reps)
    return {}
  t_start = time.perf_counter()
  result: dict[str, Any] = {
      "benchmark": "acs_jax.bench", "schema_version": SCHEMA_VERSION,
      "mode": mode, "command": ["python", "-m", "acs_jax.bench",
                                *(argv if argv is not None else sys.argv[1:])],
      "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "machine": machine_info(device),
  }
  if mode == "profile":
    result["profile"] = profile_case(_parse_case(args.profile_case), ctx,
                                     calls=args.profile_calls)
    print(format_profile(result["profile"]), flush=True)
  elif mode == "levers":
    case = _parse_case(args.lever_case)
    result["lever_case"] = case.name
    result["levers"] = run_levers(args, case)
    result["lever_summary"] = summarize_levers(result["levers"])
    for line in format_lever_summary(result["lever_summary"]):
      print(line, flush=True)
  else:
    _run_benchmark(args, mode, ctx, reps, result)
  result["machine"]["loadavg_1m_end"] = _loadavg()
  result["wall_s"] = time.perf_counter() - t_start
  if mode not in ("profile", "levers"):
    print(format_report(result), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, sort_keys=False, default=_json_default)
  return result


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")


def _run_benchmark(args, mode: str, ctx: Context, reps: dict,
                   result: dict) -> None:
  """Ceiling, cases in priority order, selection, targets."""
  plan = {"quick": quick_plan, "smoke": smoke_plan}.get(
      mode, lambda: full_plan(args))()
  if mode == "smoke":
    args.selection_case = "resnet_tiny/basic/w2"
  result["mode_changes"] = {"quick": QUICK_CHANGES,
                            "smoke": SMOKE_CHANGES}.get(mode, [])
  result["settings"] = {
      "min_reps": args.min_reps, "max_reps": args.max_reps,
      "case_seconds": args.case_seconds, "budget_s": args.budget_s,
      "warmup_calls": 1, "ceiling_warmup_s": args.ceiling_warmup_s,
      "selection_pass": args.selection_pass,
      "selection_batches": args.selection_batches,
      "selection_input": args.selection_input,
      "plan": [c.name for c in plan],
      "data": "random normal images 32x32x3, random labels of 10 classes",
      "student_init": "teacher weights + LSQ weight steps from the kernels, "
                      "activation steps 0.05 (values do not change the cost)",
      "train_optimizer": "config_lib base train config: SGD Nesterov 0.9, "
                         "wd 5e-4 on kernels, linear LR schedule",
  }
  result["reference"] = {k: v for k, v in REFERENCE.items() if k != "train"}
  result["reference"]["train"] = [
      {"block": b, "bits": q, "loss": l, "images_per_s": v}
      for (b, q, l), v in REFERENCE["train"].items()]
  smoke = mode == "smoke"
  result["ceiling"] = matmul_ceiling(
      ctx.device, n=256 if smoke else 2048, warmup_s=args.ceiling_warmup_s,
      calls=3 if smoke else 5 if mode == "quick" else 10)
  ceiling = result["ceiling"]["median_gflops"]
  print(f"matmul ceiling {ceiling:.1f} GFLOP/s", flush=True)
  cases, skipped = [], []
  sel_model, sel_block, sel_bits = args.selection_case.split("/")
  items: list[Any] = list(plan)
  if args.selection:
    # Right after the two cases it reuses (the KD step time and the compiled
    # score step), whatever their priority.
    deps = [c.priority for c in plan
            if (c.model, c.block, c.bits) == (sel_model, sel_block, sel_bits)
            and (c.loss == "kd" or c.teacher == "cached")]
    sel_prio = max(deps) + 0.5 if deps else SELECTION_PRIORITY
    items.append("selection")
    items.sort(key=lambda c: sel_prio if c == "selection" else c.priority)
  t0 = time.perf_counter()
  last_cost: dict[tuple, float] = {}
  selection = None
  for item in items:
    elapsed = time.perf_counter() - t0
    if item == "selection":
      key = ("selection",)
      name = "selection"
    else:
      key = (item.kind, item.model)
      name = item.name
    est = last_cost.get(key, 0.0)
    if args.budget_s and elapsed + est > args.budget_s:
      skipped.append({"name": name, "reason": f"--budget_s {args.budget_s:.0f}"
                      f" (elapsed {elapsed:.0f} s, estimate {est:.0f} s)"})
      print(f"skip {name}: budget", flush=True)
      continue
    c0 = time.perf_counter()
    if item == "selection":
      train_rec = _find(cases, kind="train", model=sel_model,
                        block=sel_block, bits=sel_bits, loss="kd")
      score_rec = _find(cases, kind="score", model=sel_model,
                        block=sel_block, bits=sel_bits, teacher="cached")
      score_batch = score_rec["batch"] if score_rec else args.score_batch
      selection = run_selection(
          ctx, model=sel_model, block=sel_block, bits=sel_bits,
          num_samples=args.selection_samples, score_batch=score_batch,
          fraction=args.fraction, mode=args.selection_pass,
          sub_batches=args.selection_batches,
          input_kind=args.selection_input, train_rec=train_rec,
          score_rec=score_rec)
      print(f"selection: {selection['total_s']:.1f} s "
            f"({selection['scoring_mode']})", flush=True)
    else:
      rec, _, _ = run_case(item, ctx, reps, ceiling)
      cases.append(rec)
      print(f"{rec['name']}: {rec['images_per_s']['median']:.1f} img/s "
            f"({rec['reps']} reps, compile {rec['compile_s']:.1f} s, load "
            f"{rec['loadavg_1m']})", flush=True)
    last_cost[key] = time.perf_counter() - c0
  result["cases"] = cases
  result["skipped"] = skipped
  result["selection"] = selection
  result["targets"] = evaluate_targets(cases, selection)
  if mode == "full":
    result["ceiling_end"] = matmul_ceiling(
        ctx.device, warmup_s=0.5, calls=10)


if __name__ == "__main__":
  main()
