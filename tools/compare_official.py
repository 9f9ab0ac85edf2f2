r"""acs_jax against the official PyTorch code (HuangOwen/QAT-ACS), on this CPU.

  python tools/compare_official.py --official=PATH/TO/QAT-ACS
  python tools/compare_official.py --official=PATH --rounds 5 \
      --cases qat_kd_w2a2,score_as_written --out compare.json
  python tools/compare_official.py --official=PATH --torch_python=T/bin/python

Each case runs in fresh processes, the two implementations alternating
(official, acs_jax, official, acs_jax, ... for --rounds rounds), so a slow
drift of the machine's load hits both alike. A child reports the median of
--steps timed steps after a warm-up; its peak resident memory (ru_maxrss, as
the parent's wait4 sees it) goes next to its time. Printed per case: img/s of
each side (median and range over rounds), the ratio acs_jax / official of
every round (median and range; > 1: acs_jax is faster), peak RSS, and the
CPU model and date. Both sides run on the CPU (JAX_PLATFORMS=cpu) with every
core this process may use: XLA:CPU takes them all, torch gets as many
threads (torch.set_num_threads). Random CIFAR-shaped data, already in memory:
no data loading on either side.

The official side imports the checkout's own modules (its deepcore/nets
ResNets and LSQ layers, utils.train, utils_loss.DistributionLoss) with the
checkout on sys.path; the packages deepcore/ and deepcore/nets/ are entered
without running their __init__ files (they import every method and
architecture), and torchvision, ipdb and prefetch_generator, imported but
unused on the 32x32 path, are stood in for where not installed (the result
lists them). Its train step is the checkout's utils.train(), fed one batch
--steps times; its score pass restates the per-batch body of
deepcore/methods/adptive_css.py (that module needs files the snapshot may
lack). acs_jax's side is `python -m acs_jax.bench` with the matching case.
Nothing of the official code is copied here.

--tiny: batch 2 (score 4), 1 warm-up + 2 timed steps, torch on 1 thread and
resnet_tiny on the acs_jax side (the official code has only its ResNet-18 at
32x32): a check that the tool runs end to end; its ratios mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Case:
  what: str
  kind: str  # "train" or "score"
  bits: int | None  # official --bitwidth (W and A); None: FP ResNet-18
  loss: str | None  # train: "kd" or "ce"
  no_grad: bool  # score: the models' no_grad flag (true inference)
  acs: tuple[str, ...]  # acs_jax.bench flags of the matching case
  batch: int  # main.py's --batch for scoring (256); 128 for training


CASES = {
    "qat_kd_w2a2": Case(
        "QAT step W2A2, official block, KD from the frozen FP ResNet-18",
        "train", 2, "kd", False,
        ("--block", "official", "--bits", "w2a2", "--cases", "train_kd"),
        128),
    "qat_kd_w4a4": Case(
        "QAT step W4A4, official block, KD from the frozen FP ResNet-18",
        "train", 4, "kd", False,
        ("--block", "official", "--bits", "w4a4", "--cases", "train_kd"),
        128),
    "qat_ce_w2a2": Case(
        "QAT step W2A2, official block, cross-entropy (no teacher)",
        "train", 2, "ce", False,
        ("--block", "official", "--bits", "w2a2", "--cases", "train_ce"),
        128),
    "fp": Case("FP ResNet-18 train step (cross-entropy), standard block",
               "train", None, "ce", False,
               ("--block", "basic", "--bits", "w2", "--cases", "train_fp"),
               128),
    "score_as_written": Case(
        "ACS score pass, W4A4: theirs as adptive_css.py runs it (student + "
        "FP forward, autograd left on) vs acs_jax's (student forward, cached "
        "teacher softmax)", "score", 4, None, False,
        ("--block", "official", "--bits", "w4a4", "--cases", "score"), 256),
    "score_inference": Case(
        "ACS score pass, W4A4: theirs as true inference (no_grad=True) vs "
        "acs_jax's", "score", 4, None, True,
        ("--block", "official", "--bits", "w4a4", "--cases", "score"), 256),
}


# ---------------------------------------------------------------------------
# The official side, in its own process (imports torch and the checkout).


def _load_official(path: str) -> tuple[tuple, list[str]]:
  """The checkout's modules: (quantized nets, FP nets, utils, utils_loss)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  class Unavailable(torch.nn.Module):  # the 224x224 path's base classes
    def __init__(self, *a, **k):
      raise RuntimeError("torchvision is not installed here")

  stand_ins = {
      "torchvision": {}, "torchvision.models": {},
      "torchvision.models.resnet": {"ResNet": Unavailable,
                                    "BasicBlock": Unavailable,
                                    "Bottleneck": Unavailable,
                                    "model_urls": {}},
      "ipdb": {}, "prefetch_generator": {"BackgroundGenerator": iter}}
  stood_in = []
  for name, attrs in stand_ins.items():
    try:
      importlib.import_module(name)
    except ImportError:
      sys.modules[name] = types.ModuleType(name)
      for k, v in attrs.items():
        setattr(sys.modules[name], k, v)
      stood_in.append(name)
  if "torchvision.models" in stood_in:
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["torchvision.models"].resnet = sys.modules[
        "torchvision.models.resnet"]
  sys.path.insert(0, path)
  for pkg in ("deepcore", "deepcore.nets"):  # entered, __init__ not run
    module = types.ModuleType(pkg)
    module.__path__ = [os.path.join(path, *pkg.split("."))]
    sys.modules[pkg] = module
  mods = tuple(importlib.import_module(m) for m in (
      "deepcore.nets.lsq_quant_resnet", "deepcore.nets.resnet", "utils",
      "utils_loss"))
  return mods, stood_in


class _Loader:
  """`n` copies of one batch for utils.train, time-stamping each fetch."""

  def __init__(self, batch, n: int, stamps: list):
    self.batch, self.n, self.stamps = batch, n, stamps

  def __len__(self):
    return self.n

  def __iter__(self):
    for _ in range(self.n):
      self.stamps.append(time.perf_counter())
      yield self.batch


def _quant_sgd(torch, net, lr: float, wd: float):
  """The three SGD parameter groups main.py makes when --bitwidth is set:
  activation step sizes at lr/10, conv kernels with weight decay, the rest."""
  named = list(net.named_parameters())
  alpha = [p for n, p in named
           if any(k in n for k in ("quan1.a", "quan2.a", "scale", "start"))]
  weight = [p for n, p in named if p.ndimension() == 4 and "bias" not in n]
  taken = {id(p) for p in alpha + weight}
  other = [p for _, p in named if id(p) not in taken]
  return torch.optim.SGD([{"params": alpha, "lr": lr / 10},
                          {"params": other, "lr": lr},
                          {"params": weight, "weight_decay": wd, "lr": lr}],
                         momentum=0.9, nesterov=True)


def official_child(job: dict) -> dict:
  """Times one official case; returns per-step seconds and versions."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(job["threads"])
  torch.manual_seed(0)
  (qnets, fpnets, utils, utils_loss), stood_in = _load_official(
      job["official"])
  case, b = CASES[job["case"]], job["batch"]
  x, y = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
  fp = fpnets.ResNet18(3, 10, (32, 32))
  if case.kind == "train":
    if case.bits:
      net = qnets.QResNet18(case.bits, 3, 10, (32, 32))
      opt = _quant_sgd(torch, net, 0.01, 5e-4)
    else:
      net = fp
      opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9,
                            weight_decay=5e-4, nesterov=True)
    teacher = criterion = None
    if case.loss == "kd":
      teacher = fp if case.bits else fpnets.ResNet18(3, 10, (32, 32))
      for p in teacher.parameters():
        p.requires_grad = False
      teacher.eval()
      criterion = utils_loss.DistributionLoss()
    else:
      criterion = torch.nn.CrossEntropyLoss(reduction="none")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 - e / 200)
    args = __import__("types").SimpleNamespace(device="cpu", print_freq=20)
    rec = utils.init_recorder()

    def steps(n):  # their per-epoch loop over n batches
      stamps = []
      utils.train(_Loader((x, y), n, stamps), net, criterion, teacher, opt,
                  sched, 0, args, rec)
      stamps.append(time.perf_counter())
      return [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])]

    steps(job["warmup"])
    secs = steps(job["steps"])
    finite = all(v == v for v in rec.train_loss)
  else:
    student = qnets.QResNet18(case.bits, 3, 10, (32, 32))
    with torch.no_grad():  # LSQ step sizes start on a training forward
      student.train()
      student(x[:64])
    student.eval()
    fp.eval()
    student.no_grad = fp.no_grad = case.no_grad
    scores, secs = torch.zeros(b), []
    with torch.no_grad():  # ACS.select's per-batch body, as written there
      for i in range(job["warmup"] + job["steps"]):
        t0 = time.perf_counter()
        p = F.softmax(student(x), dim=1)
        p_fp = F.softmax(fp(x), dim=1)
        ds = torch.linalg.vector_norm(p - p_fp, ord=2, dim=1)
        evs = torch.linalg.vector_norm(p - F.one_hot(y, 10), ord=2, dim=1)
        scores[:] = 0.5 * evs + 0.5 * ds
        if i >= job["warmup"]:
          secs.append(time.perf_counter() - t0)
    finite = bool(torch.isfinite(scores).all())
  return {"step_s": secs, "batch": b, "finite": finite,
          "torch": torch.__version__, "threads": torch.get_num_threads(),
          "stood_in": stood_in}


# ---------------------------------------------------------------------------
# The driver.


def plan(cases: list[str], rounds: int) -> list[tuple[int, str, str]]:
  """(round, case, side) in run order: per round and case, official then
  acs_jax; an acs_jax case shared by several (the score pass) runs once a
  round."""
  out = []
  for r in range(rounds):
    seen = set()
    for c in cases:
      out.append((r, c, "official"))
      if CASES[c].acs not in seen:
        seen.add(CASES[c].acs)
        out.append((r, c, "acs_jax"))
  return out


def _run(cmd: list[str], env: dict, timeout_s: float) -> dict:
  """Runs a child; returns rc, wall seconds, peak RSS (MB) and its log."""
  with tempfile.TemporaryFile() as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "log_tail": log.read().decode(errors="replace")[-3000:]}


def run_one(args, rnd: int, case_name: str, side: str, threads: int) -> dict:
  case = CASES[case_name]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  batch = (4 if case.kind == "score" else 2) if args.tiny else case.batch
  warmup = 1 if args.tiny else 3
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    if side == "official":
      job = {"official": os.path.abspath(args.official), "case": case_name,
             "batch": batch, "steps": args.steps, "warmup": warmup,
             "threads": threads, "out": out}
      env.update({k: str(threads) for k in ("OMP_NUM_THREADS",
                                            "MKL_NUM_THREADS")})
      cmd = [args.torch_python, os.path.abspath(__file__), "--child",
             json.dumps(job)]
    else:
      cmd = [sys.executable, "-m", "acs_jax.bench", *case.acs, "--model",
             "resnet_tiny" if args.tiny else "resnet18", "--batch",
             str(batch), "--score_batch", str(batch), "--steps",
             str(args.steps), "--out", out] + (["--quick"] if args.tiny
                                                else [])
    rec = {"round": rnd, "case": case_name, "side": side, "cmd": cmd,
           **_run(cmd, env, args.timeout_s)}
    if rec["rc"] == 0 and os.path.exists(out):
      with open(out) as f:
        res = json.load(f)
      if side == "official":
        rec["step_s"] = statistics.median(res["step_s"])
        rec["result"] = res
      else:
        (c,) = res["cases"]
        rec["step_s"] = c["step_s"]["median"]
        rec["result"] = {"machine": res["machine"], "case": c,
                         "rss_after_import_mb": res["rss_after_import_mb"]}
      rec["images_per_s"] = batch / rec["step_s"]
      del rec["log_tail"]
  status = (f"{rec['images_per_s']:.1f} img/s" if "images_per_s" in rec
            else f"FAILED (rc {rec['rc']}):\n{rec['log_tail'][-1500:]}")
  print(f"round {rnd} {case_name:<17} {side:<8} {status}, peak RSS "
        f"{rec['peak_rss_mb']:.0f} MB", flush=True)
  return rec


def summarize(runs: list[dict], cases: list[str]) -> list[dict]:
  """Per case: img/s of each side over rounds, the per-round ratios."""
  by = {}
  for r in runs:
    key = CASES[r["case"]].acs if r["side"] == "acs_jax" else r["case"]
    by[(r["round"], r["side"], key)] = r
  rounds = sorted({r["round"] for r in runs})
  out = []
  for c in cases:
    off = [by.get((n, "official", c)) for n in rounds]
    acs = [by.get((n, "acs_jax", CASES[c].acs)) for n in rounds]
    ratios = [a["images_per_s"] / o["images_per_s"] for o, a in zip(off, acs)
              if o and a and "images_per_s" in o and "images_per_s" in a]

    def spread(xs):
      return ({"median": statistics.median(xs), "min": min(xs),
               "max": max(xs)} if xs else None)

    out.append({
        "case": c, "what": CASES[c].what,
        "official_images_per_s": spread([o["images_per_s"] for o in off
                                         if o and "images_per_s" in o]),
        "acs_jax_images_per_s": spread([a["images_per_s"] for a in acs
                                        if a and "images_per_s" in a]),
        "ratios": ratios, "ratio": spread(ratios),
        "official_peak_rss_mb": spread([o["peak_rss_mb"] for o in off if o]),
        "acs_jax_peak_rss_mb": spread([a["peak_rss_mb"] for a in acs if a])})
  return out


def format_table(result: dict) -> str:
  def s(d, f=".1f"):
    return "-" if not d else (f"{d['median']:{f}} [{d['min']:{f}}-"
                              f"{d['max']:{f}}]")
  lines = [f"compare_official {result['date_utc']} on {result['cpu_model']} "
           f"({result['threads']} torch threads), torch "
           f"{result.get('torch')}, jax {result.get('jax')}, "
           f"{result['rounds']} rounds of {result['steps']} steps"
           + (" -- TINY: a test of the tool, ratios mean nothing"
              if result["tiny"] else "")]
  lines.append(f"{'case':<17} {'official img/s':>21} {'acs_jax img/s':>21} "
               f"{'acs_jax/official':>19} {'peak RSS MB off/acs':>20}")
  for c in result["summary"]:
    rss = (f"{c['official_peak_rss_mb']['median']:.0f}/"
           f"{c['acs_jax_peak_rss_mb']['median']:.0f}"
           if c["official_peak_rss_mb"] and c["acs_jax_peak_rss_mb"] else "-")
    lines.append(f"{c['case']:<17} {s(c['official_images_per_s']):>21} "
                 f"{s(c['acs_jax_images_per_s']):>21} "
                 f"{s(c['ratio'], '.2f'):>19} {rss:>20}")
  return "\n".join(lines)


def _positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: not an integer >= 1")
  return int(text)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv=None) -> int:
  if argv is None and sys.argv[1:2] == ["--child"]:
    job = json.loads(sys.argv[2])
    res = official_child(job)
    with open(job["out"], "w") as f:
      json.dump(res, f)
    return 0
  p = argparse.ArgumentParser(
      description="Speed of acs_jax against the official PyTorch code, on "
                  "this CPU (see the module docstring).",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="cases:\n" + "\n".join(f"  {k:<17} {c.what}"
                                    for k, c in CASES.items()))
  p.error = _fail  # one line, exit status 2
  p.add_argument("--official", required=True,
                 help="a checkout of github.com/HuangOwen/QAT-ACS")
  p.add_argument("--rounds", type=_positive, default=3)
  p.add_argument("--cases", default=",".join(CASES))
  p.add_argument("--steps", type=_positive, default=10,
                 help="timed steps per child (after 3 warm-up ones)")
  p.add_argument("--torch_python", default=sys.executable,
                 help="the Python with torch for the official side")
  p.add_argument("--timeout_s", type=float, default=1800.0,
                 help="a child running longer is killed")
  p.add_argument("--tiny", action="store_true",
                 help="tiny shapes and steps: tests the tool only")
  p.add_argument("--out", help="JSON file to write")
  args = p.parse_args(argv)
  cases = [c for c in args.cases.split(",") if c]
  bad = [c for c in cases if c not in CASES] or ([] if cases else ["(none)"])
  if bad:
    _fail(f"--cases={args.cases}: unknown case {', '.join(bad)}; valid: "
          f"{', '.join(CASES)}")
  need = os.path.join("deepcore", "nets", "lsq_quant_resnet.py")
  if not os.path.isfile(os.path.join(args.official, need)):
    _fail(f"--official={args.official}: not a checkout of HuangOwen/QAT-ACS "
          f"(no {need} there); clone github.com/HuangOwen/QAT-ACS and give "
          "its folder")
  probe = subprocess.run([args.torch_python, "-c", "import torch"],
                         capture_output=True, text=True, check=False)
  if probe.returncode:
    _fail(f"--torch_python={args.torch_python}: cannot import torch (install"
          " the CPU build there, e.g. pip install torch)")
  if args.tiny:
    args.steps = min(args.steps, 2)
  # XLA:CPU runs on every core this process may use: torch gets as many
  # (--tiny: 1, which keeps a loaded machine from stalling torch's threads).
  threads = 1 if args.tiny else (len(os.sched_getaffinity(0)) if hasattr(
      os, "sched_getaffinity") else os.cpu_count())
  runs = [run_one(args, r, c, side, threads)
          for r, c, side in plan(cases, args.rounds)]
  ok = [r for r in runs if "result" in r]
  machine = next((r["result"]["machine"] for r in ok
                  if r["side"] == "acs_jax"), {})
  official = os.path.abspath(args.official)
  commit = (subprocess.run(["git", "-C", official, "rev-parse", "HEAD"],
                           capture_output=True, text=True, check=False)
            .stdout.strip() if os.path.isdir(os.path.join(official, ".git"))
            else None)
  result = {
      "tool": "tools/compare_official.py", "argv": sys.argv[1:],
      "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "cpu_model": machine.get("cpu_model") or platform.processor(),
      "cpu_count": os.cpu_count(), "threads": threads,
      "official": official, "official_commit": commit,
      "torch": next((r["result"]["torch"] for r in ok
                     if r["side"] == "official"), None),
      "jax": machine.get("jax"), "tiny": args.tiny, "rounds": args.rounds,
      "steps": args.steps, "runs": runs, "summary": summarize(runs, cases)}
  print(format_table(result), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
  sys.exit(main())
