r"""Probes of where XLA's time goes: flag variants A/B, and one traced step.

  # Does acs_jax's XLA:CPU default (acs_jax/env.py) still pay on this jaxlib?
  python tools/probe_xla.py flags --rounds 2 -- --block official --bits w2a2
  # Any environment or XLA flag, appended to XLA_FLAGS with "+":
  python tools/probe_xla.py flags \
      --variant 'noxnn:+XLA_FLAGS=--xla_cpu_use_xnnpack=false' \
      --variant 'onearena:MALLOC_ARENA_MAX=1' -- --cases train_ce
  # Per-kernel time of one step, with the optimized HLO to look names up in:
  python tools/probe_xla.py profile --trace_dir /tmp/trace -- --cases train_kd

flags: each variant's environment runs `python -m acs_jax.bench` (the flags
after `--`; one step case, default train_kd) in a fresh process, variants
interleaved (A B A B) over --rounds; prints img/s and the ratio to the first
variant per round. Default variants: "acs_jax" (env.py's XLA:CPU defaults)
and "xla" (ACS_JAX_XLA_DEFAULTS=0: XLA's own). Thread counts: run the whole
probe under `taskset -c ...`.

profile: in this process, the bench's jitted step (compiled ahead of time),
warmed up, then --calls calls under jax.profiler.trace; prints the kernels
(trace events named like the optimized HLO's instructions) by time per call,
writes hlo.txt and the trace (Perfetto / TensorBoard) under --trace_dir.
XLA may overlap kernels, so their sum can exceed the wall time.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # compare_official, acs_jax
import compare_official  # noqa: E402  (its child runner: wait4 + peak RSS)
from acs_jax import env as env_lib  # noqa: E402  (imports no jax)

_positive = compare_official._positive  # pylint: disable=protected-access
_run = compare_official._run  # pylint: disable=protected-access

DEFAULT_VARIANTS = ("acs_jax:", "xla:ACS_JAX_XLA_DEFAULTS=0")


def parse_variant(text: str) -> tuple[str, dict[str, str], dict[str, str]]:
  """'name:VAR=v,+VAR2=w' -> (name, set, append); '+' appends to VAR2."""
  name, _, spec = text.partition(":")
  if not name:
    raise ValueError(f"--variant={text!r}: want NAME:VAR=VALUE,+VAR=VALUE")
  put, add = {}, {}
  for item in filter(None, spec.split(",")):
    key, eq, value = item.partition("=")
    if not eq or not key.lstrip("+"):
      raise ValueError(f"--variant={text!r}: {item!r} is not VAR=VALUE")
    (add if key.startswith("+") else put)[key.lstrip("+")] = value
  return name, put, add


def variant_env(base: dict, put: dict, add: dict) -> dict:
  """`base` with `put` set and `add` appended; ACS_JAX_XLA_DEFAULTS=0 also
  drops the flags env.py would have added to an inherited XLA_FLAGS."""
  env = {**base, **put}
  if env.get(env_lib.XLA_DEFAULTS_ENV) == "0":
    env["XLA_FLAGS"] = env_lib.without_default_xla_flags(
        env.get("XLA_FLAGS", ""))
  for k, v in add.items():
    env[k] = f"{env.get(k, '')} {v}".strip()
  return env


def flags(args, bench_argv: list[str]) -> int:
  try:
    variants = [parse_variant(v) for v in args.variant or DEFAULT_VARIANTS]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if "--cases" not in bench_argv:
    bench_argv = [*bench_argv, "--cases", "train_kd"]
  runs = []
  for rnd in range(args.rounds):
    for name, put, add in variants:
      with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "acs_jax.bench", *bench_argv, "--out",
               out]
        rec = {"round": rnd, "variant": name, "set": put, "append": add,
               **_run(cmd, variant_env(os.environ, put, add), args.timeout_s)}
        if rec["rc"] == 0:
          with open(out) as f:
            res = json.load(f)
          (case,) = res["cases"]
          rec.update(case=case, xla_flags=res["machine"]["xla_flags"])
          del rec["log_tail"]
      runs.append(rec)
      print(f"round {rnd} {name:<12} " + (
          f"{rec['case']['images_per_s']['median']:.1f} img/s, compile "
          f"{rec['case']['compile_s']:.1f} s, XLA_FLAGS={rec['xla_flags']!r}"
          if "case" in rec else f"FAILED:\n{rec['log_tail'][-1500:]}"),
            flush=True)
  first = variants[0][0]
  ips = {(r["round"], r["variant"]): r["case"]["images_per_s"]["median"]
         for r in runs if "case" in r}
  print(f"{'variant':<12} {'img/s median':>12} {'x ' + first:>12}")
  summary = []
  for name, _, _ in variants:
    mine = [ips[(n, name)] for n in range(args.rounds) if (n, name) in ips]
    ratios = [ips[(n, name)] / ips[(n, first)] for n in range(args.rounds)
              if (n, name) in ips and (n, first) in ips]
    summary.append({"variant": name, "images_per_s": mine,
                    "ratios_to_first": ratios})
    print(f"{name:<12} {_med(mine):>12} {_med(ratios, '.2f'):>12}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"bench_argv": bench_argv, "runs": runs, "summary": summary},
                f, indent=1)
  return 0 if len(ips) == len(runs) else 1


def _med(xs, spec=".1f") -> str:
  return format(statistics.median(xs), spec) if xs else "-"


def hlo_names(hlo_text: str) -> set[str]:
  """Instruction names of an HLO module's text."""
  return set(re.findall(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", hlo_text,
                        re.MULTILINE))


def kernel_seconds(trace_dir: str, names: set[str]) -> collections.Counter:
  """Seconds per trace event whose name is an HLO instruction."""
  paths = sorted((os.path.join(root, f) for root, _, files in
                  os.walk(trace_dir) for f in files
                  if f.endswith("trace.json.gz")), key=os.path.getmtime)
  if not paths:
    return collections.Counter()
  with gzip.open(paths[-1]) as f:  # the latest trace
    data = json.load(f)
  out = collections.Counter()
  for e in data["traceEvents"] if isinstance(data, dict) else data:
    if "dur" in e and e.get("name") in names:
      out[e["name"]] += e["dur"] / 1e6
  return out


def profile(args, bench_argv: list[str]) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from acs_jax import bench, env  # pylint: disable=g-import-not-at-top
  spec, cases, _ = bench.parse_args(bench_argv or ["--cases", "train_kd"])
  if len(cases) != 1 or cases[0] not in bench.STEP_CASES:
    print(f"error: --cases: give one of {', '.join(bench.STEP_CASES)}",
          file=sys.stderr)
    return 2
  env.configure_jax()
  ctx = bench.Context(spec, jax.devices()[0])
  prep = bench.prepare(ctx, cases[0], "float32")
  compiled = prep.jitted.lower(*prep.args).compile()
  bench.time_calls(prep.call, 0, spec.warmup)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="acs_probe_")
  os.makedirs(trace_dir, exist_ok=True)
  text = compiled.as_text()
  with open(os.path.join(trace_dir, "hlo.txt"), "w") as f:
    f.write(text)
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    bench.time_calls(prep.call, args.calls, 0)
  wall = (time.perf_counter() - t0) / args.calls
  per = {k: v / args.calls for k, v in kernel_seconds(
      trace_dir, hlo_names(text)).items()}
  total = sum(per.values())
  print(f"{cases[0]} ({spec.model} {spec.block} {spec.bits}, batch "
        f"{prep.images}): {wall:.4f} s per traced call, {total:.4f} s in "
        f"{len(per)} kernels; {trace_dir}/hlo.txt")
  top = sorted(per.items(), key=lambda kv: -kv[1])[:args.top]
  for name, s in top:
    print(f"  {s:9.5f} s {100 * s / total if total else 0:5.1f}%  {name}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"case": cases[0], "wall_s_per_call": wall,
                 "kernel_s_per_call": total, "kernels": dict(top),
                 "trace_dir": trace_dir}, f, indent=1)
  return 0 if per else 1


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  own, bench_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]
                     ) if "--" in argv else (argv, [])
  p = argparse.ArgumentParser(
      description="XLA probes (see the module docstring); flags after `--` "
                  "go to acs_jax.bench.")
  p.error = lambda m: p.exit(2, f"error: {m}\n")
  sub = p.add_subparsers(dest="probe", required=True)
  f = sub.add_parser("flags", help="environment / XLA flag variants, A/B")
  f.add_argument("--variant", action="append",
                 help="NAME:VAR=VALUE,+VAR=VALUE (repeat; default: acs_jax "
                      "and xla defaults)")
  f.add_argument("--rounds", type=_positive, default=2)
  f.add_argument("--timeout_s", type=float, default=1800.0)
  f.add_argument("--out", help="JSON file")
  t = sub.add_parser("profile", help="per-kernel time of one traced step")
  t.add_argument("--calls", type=_positive, default=3)
  t.add_argument("--top", type=_positive, default=15)
  t.add_argument("--trace_dir", help="default: a new temporary folder")
  t.add_argument("--out", help="JSON file")
  args = p.parse_args(own)
  return (flags if args.probe == "flags" else profile)(args, bench_argv)


if __name__ == "__main__":
  sys.exit(main())
