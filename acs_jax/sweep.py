r"""A grid of QAT runs (selectors x fractions x seeds [x label noise]).

  python -m acs_jax.sweep --config=configs/sweep_r20_cifar10.py --workdir=DIR

The config is an ordinary experiment config plus a `config.sweep` section:

  sweep.name              a label written into every CSV row.
  sweep.selectors         e.g. ("full", "random", "acs"); any coreset selector.
  sweep.fractions         e.g. (0.1, 0.3); "full" ignores them (fraction 1.0).
  sweep.seeds             e.g. (0, 1, 2): config.seed of each run.
  sweep.label_noise       e.g. (0.0, 0.2): config.data.label_noise per run.
  sweep.teacher_per_noise one teacher per label-noise rate (default True).
  sweep.full_seeds        seeds of the "full" runs (default: sweep.seeds);
                          full-data QAT costs 1/fraction coreset runs.
  sweep.extra             more (selector, fraction) cells, run for every seed
                          after the grid, e.g. (("random", 0.15),): random at
                          the fraction whose cost matches ACS at 10 %.
  sweep.compilation_cache keep XLA executables in DIR/jax_cache (default
                          True; command line only) so later runs compile
                          less.

Teacher reuse: the teacher is trained once, by the first run of the grid (in
the order noise, selector, fraction, seed), into DIR/runs/<first>/teacher; every
other run loads it through config.teacher.checkpoint. With several label-noise
rates and sweep.teacher_per_noise (the default), the first run of each rate
trains one, because the teacher learns from the same (noisy) training labels
as its students: a clean teacher would hand a KD student the clean labels. If
the base config already names config.teacher.checkpoint, no teacher is
trained: every run loads that one, unless config.teacher.finetune_epochs > 0,
when the first run (of each rate) fine-tunes it and the others load the
fine-tuned one. All runs of one teacher share its seed (the first run's); the seeds
vary only the student stage. data.seed is not varied, so every run of one
noise rate sees the same flipped labels as its teacher.

Resume: a run whose summary.json exists is skipped (with a warning if its
config.json differs from the planned config). Any other run is started on its
directory, so train_and_evaluate's own checkpoints resume an interrupted run
from its last finished epoch (a saved teacher is loaded, not retrained) and
rewind its metrics.jsonl to that epoch.

Before any training, every run's config is validated
(acs_jax.config_lib.validate) and every coreset is checked to hold at least one
training batch, so a bad grid stops in seconds, not hours.

Outputs in DIR: runs/<selector>_f<fraction>_s<seed>[_noise<rate>]/ (each a
normal acs_jax workdir), results.csv (one row per run), results.md (mean +-
std over seeds), accuracy_vs_fraction.png, accuracy_vs_time.png and
sweep_config.json.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import ml_collections
from absl import logging

from acs_jax import config_lib
from acs_jax import sweep_report
from acs_jax.sweep_report import format_number

ConfigError = config_lib.ConfigError


def sweep_defaults() -> ml_collections.ConfigDict:
  """The `config.sweep` fields a config may leave out."""
  s = ml_collections.ConfigDict()
  s.name = "sweep"
  s.selectors = ("full", "random", "acs")
  s.fractions = (0.1, 0.3)
  s.seeds = (0,)
  s.label_noise = (0.0,)
  s.teacher_per_noise = True
  s.full_seeds = ()
  s.extra = ()
  s.compilation_cache = True
  return s


@dataclasses.dataclass
class Run:
  """One cell of the grid."""
  name: str
  selector: str
  fraction: float
  seed: int
  label_noise: float
  config: ml_collections.ConfigDict
  teacher_run: str = ""     # name of the run that trains this run's teacher
  trains_teacher: bool = False


def run_name(selector: str, fraction: float, seed: int,
             label_noise: float = 0.0) -> str:
  name = f"{selector}_f{format_number(fraction)}_s{int(seed)}"
  if label_noise:
    name += f"_noise{format_number(label_noise)}"
  return name


# ---------------------------------------------------------------------------
# Planning: the grid, its configs, and checks made before any work.


def _as_tuple(value, field: str) -> tuple:
  if isinstance(value, (list, tuple)):
    values = tuple(value)
  else:  # A single value from the command line, e.g. --config.sweep.seeds=0.
    values = (value,)
  if not values:
    raise ConfigError(f"config.sweep.{field} is empty; give at least one "
                      "value")
  if len(set(values)) != len(values):
    raise ConfigError(f"config.sweep.{field}={values!r} repeats a value")
  return values


@dataclasses.dataclass
class SweepSpec:
  """config.sweep after defaults and checks (plain Python values)."""
  name: str
  selectors: tuple[str, ...]
  fractions: tuple[float, ...]
  seeds: tuple[int, ...]
  label_noise: tuple[float, ...]
  teacher_per_noise: bool
  compilation_cache: bool
  full_seeds: tuple[int, ...] = ()
  extra: tuple[tuple[str, float], ...] = ()


def sweep_section(config: ml_collections.ConfigDict) -> SweepSpec:
  """config.sweep with defaults filled in and every value checked."""
  from acs_jax.coreset import baselines  # pylint: disable=g-import-not-at-top
  given = config.get("sweep")
  if given is None:
    raise ConfigError("config.sweep is missing; a sweep config needs "
                      "config.sweep.selectors / fractions / seeds")
  values = sweep_defaults().to_dict()
  for key, value in given.items():
    if key not in values:
      raise ConfigError(f"config.sweep.{key} is unknown; valid fields: "
                        f"{', '.join(values)}")
    values[key] = value
  spec = SweepSpec(
      name=str(values["name"]),
      selectors=_as_tuple(values["selectors"], "selectors"),
      fractions=_as_tuple(values["fractions"], "fractions"),
      seeds=_as_tuple(values["seeds"], "seeds"),
      label_noise=_as_tuple(values["label_noise"], "label_noise"),
      teacher_per_noise=bool(values["teacher_per_noise"]),
      compilation_cache=bool(values["compilation_cache"]),
      full_seeds=(_as_tuple(values["full_seeds"], "full_seeds")
                  if values["full_seeds"] else ()),
      extra=(tuple(tuple(cell) for cell in _as_tuple(values["extra"],
                                                     "extra"))
             if values["extra"] else ()))
  for cell in spec.extra:
    if (len(cell) != 2 or cell[0] not in baselines.SELECTORS
        or isinstance(cell[1], bool) or not isinstance(cell[1], (int, float))
        or not 0 < cell[1] <= 1):
      raise ConfigError(f"config.sweep.extra: {cell!r} is not valid; each "
                        "cell is (selector, fraction in (0, 1])")
  for name in spec.selectors:
    if name not in baselines.SELECTORS:
      raise ConfigError(f"config.sweep.selectors: {name!r} is not valid; "
                        f"valid values: {', '.join(baselines.SELECTORS)}")
  for f in spec.fractions:
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
      raise ConfigError(f"config.sweep.fractions: {f!r} is not valid; each "
                        "must be in (0, 1]")
  for seed in spec.seeds + spec.full_seeds:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
      raise ConfigError(f"config.sweep.seeds: {seed!r} is not valid; each "
                        "must be an integer >= 0")
  for r in spec.label_noise:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (
        0.0 <= r < 1.0):
      raise ConfigError(f"config.sweep.label_noise: {r!r} is not valid; each "
                        "rate must be in [0, 1)")
  return spec


def _run_config(base: ml_collections.ConfigDict, *, selector: str,
                fraction: float, seed: int, label_noise: float
                ) -> ml_collections.ConfigDict:
  c = copy.deepcopy(base)
  with c.unlocked():
    if "sweep" in c:
      del c["sweep"]  # A run is a plain experiment; the grid is the sweep's.
  c.seed = int(seed)
  c.coreset.selector = selector
  c.coreset.fraction = float(fraction)
  c.data.label_noise = float(label_noise)
  if c.data.path:
    c.data.path = os.path.abspath(os.path.expanduser(c.data.path))
  if c.teacher.checkpoint:
    c.teacher.checkpoint = os.path.abspath(
        os.path.expanduser(c.teacher.checkpoint))
  return c


def plan(config: ml_collections.ConfigDict) -> list[Run]:
  """Every run of the sweep, in execution order, each config validated.

  Raises:
    ConfigError: a bad sweep field or a run config that validate() refuses.
  """
  s = sweep_section(config)
  runs: list[Run] = []
  for noise in s.label_noise:
    # "full" trains on every sample: one run per seed, not per fraction.
    cells = [(sel, f) for sel in s.selectors
             for f in ((1.0,) if sel == "full" else s.fractions)]
    cells += [c for c in s.extra if c not in cells]
    for selector, fraction in cells:
      seeds = s.full_seeds if selector == "full" and s.full_seeds else s.seeds
      for seed in seeds:
        name = run_name(selector, fraction, seed, noise)
        c = _run_config(config, selector=selector, fraction=fraction,
                        seed=seed, label_noise=noise)
        try:
          config_lib.validate(c)
        except ConfigError as e:
          raise ConfigError(f"sweep run {name}: {e}") from None
        runs.append(Run(name, selector, float(fraction), int(seed),
                        float(noise), c))
  # A teacher is made by the first run (of each noise rate): trained, or
  # fine-tuned from config.teacher.checkpoint; the other runs load it.
  if not config.teacher.checkpoint or config.teacher.finetune_epochs:
    teacher_of: dict[Any, str] = {}
    for run in runs:
      key = run.label_noise if s.teacher_per_noise else None
      if key not in teacher_of:
        teacher_of[key] = run.name
        run.trains_teacher = True
      run.teacher_run = teacher_of[key]
  return runs


def check_coreset_sizes(runs: Sequence[Run]) -> None:
  """Refuses a grid whose smallest coreset is below one training batch.

  train_and_evaluate makes the same check (train.check_batch_sizes), but
  only when that run starts; here it costs one data load per label-noise
  rate, before any run of the grid.
  """
  from acs_jax import train  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets  # pylint: disable=g-import-not-at-top
  dataset_of = {}
  for run in runs:
    key = config_lib.data_options(run.config.data)  # hashable, typed
    if key not in dataset_of:
      try:
        dataset_of[key] = datasets.load_dataset(key)
      except ValueError as e:  # The data module names the field already.
        raise ConfigError(str(e)) from None
    try:
      train.check_batch_sizes(run.config, dataset_of[key],
                              teacher_trains=False)
    except ConfigError as e:
      raise ConfigError(f"sweep run {run.name}: {e} (or drop that fraction "
                        "from config.sweep.fractions)") from None


# ---------------------------------------------------------------------------
# Running.


def _config_differences(run_dir: str, config: ml_collections.ConfigDict
                        ) -> list[str]:
  """Fields where a finished run's config.json differs from the plan."""
  from acs_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = ckpt_lib.config_fingerprint(
        ml_collections.ConfigDict(json.load(f)))
  planned = json.loads(json.dumps(ckpt_lib.config_fingerprint(config),
                                  default=str))
  return sorted(k for k in set(saved) | set(planned)
                if saved.get(k) != planned.get(k))


def _enable_compilation_cache(workdir: str) -> None:
  """Persists XLA executables so later runs of the grid compile less.

  Every run jits the same functions on the same shapes; jax's in-memory cache
  is keyed on the (new) Python callables, the persistent one on the program.
  Evaluation, scoring and calibration hit it; the QAT train step does not
  across fractions (its LR schedule's steps per epoch are baked in). Set from
  the command line only: a process-wide setting that must not leak from
  run_sweep into whatever else runs in the process (e.g. tests).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return  # The user (or the environment) chose one already.
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(os.path.abspath(workdir), "jax_cache"))
  # Only compiles of 1 s or more are kept, unless the environment says
  # otherwise (JAX reads JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS itself).
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_sweep(config: ml_collections.ConfigDict, workdir: str
              ) -> list[dict[str, Any]]:
  """Plans, checks, runs (or skips) every run, then writes the reports.

  Returns:
    The rows of results.csv (dicts keyed by CSV_FIELDS).
  """
  from acs_jax import train  # pylint: disable=g-import-not-at-top
  runs = plan(config)
  check_coreset_sizes(runs)
  s = sweep_section(config)
  workdir = os.path.abspath(workdir)
  runs_dir = os.path.join(workdir, "runs")
  os.makedirs(runs_dir, exist_ok=True)
  with open(os.path.join(workdir, "sweep_config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  done = sum(os.path.exists(os.path.join(runs_dir, r.name, "summary.json"))
             for r in runs)
  logging.info("Sweep %s: %d runs, %d already finished", s.name, len(runs),
               done)
  t_start = time.time()
  for i, run in enumerate(runs):
    run_dir = os.path.join(runs_dir, run.name)
    head = f"[{i + 1}/{len(runs)}] {run.name}"
    c = run.config
    teacher_dir = ""
    if run.teacher_run and not run.trains_teacher:
      teacher_dir = os.path.join(runs_dir, run.teacher_run, "teacher")
      c = copy.deepcopy(c)
      c.teacher.checkpoint = teacher_dir
      c.teacher.finetune_epochs = 0  # fine-tuned once, by its own run
    if os.path.exists(os.path.join(run_dir, "summary.json")):
      print(f"{head}: finished earlier, skipped", flush=True)
      changed = _config_differences(run_dir, c)
      if changed:
        # Kept, not redone: the user decides (delete the run directory).
        logging.warning("%s finished with a different config (%s); its "
                        "results are reported as they are", run_dir,
                        ", ".join(changed))
      continue
    if teacher_dir and not os.path.exists(os.path.join(teacher_dir,
                                                       "teacher.json")):
      raise FileNotFoundError(
          f"{head}: the shared teacher {teacher_dir} is missing (its run "
          f"{run.teacher_run} finished without it); delete "
          f"{os.path.join(runs_dir, run.teacher_run)} to retrain it")
    what = "training the teacher, then QAT" if run.trains_teacher else "QAT"
    print(f"{head}: {what} (elapsed {time.time() - t_start:.0f}s)",
          flush=True)
    train.train_and_evaluate(c, run_dir)
  rows = sweep_report.collect(workdir, runs, s.name)
  sweep_report.write_reports(workdir, rows)
  print(f"Sweep {s.name}: {len(rows)} runs; results in "
        f"{os.path.join(workdir, 'results.md')}", flush=True)
  return rows


# ---------------------------------------------------------------------------
# Command line.


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from acs_jax import checkpoint, env  # pylint: disable=g-import-not-at-top
  env.configure_jax()
  env.quiet_library_logs()
  workdir = os.path.expanduser(flags.FLAGS.workdir)
  try:
    if sweep_section(flags.FLAGS.config).compilation_cache:
      _enable_compilation_cache(workdir)
    run_sweep(flags.FLAGS.config, workdir)
  except (ConfigError, checkpoint.CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _define_flags() -> None:
  # Defined here, not at import, so that importing this module (tests, other
  # tools) never clashes with acs_jax.main's flags of the same names.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "Directory of the sweep's outputs.")
  config_flags.DEFINE_config_file("config", None, "Sweep config file.",
                                  lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from acs_jax import env as _env  # pylint: disable=g-import-not-at-top
  _env.quiet_tensorflow()
  _env.set_xla_defaults()
  _define_flags()
  app.run(main)
