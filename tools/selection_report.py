r"""What finished runs' coresets are made of, seen by their teacher.

  python tools/selection_report.py RUN_DIR [RUN_DIR ...] \
      [--data PATH] [--json OUT.json]

For each run (a workdir of `python -m acs_jax.main`, or a sweep's
`runs/<name>`): the test top-1 curve, the seconds spent selecting, training and
evaluating, and for every saved selection (`selections/selection_epoch*.npy`) its
size, beta, how many of its images the run's frozen teacher gets wrong (on the
unaugmented training image, against the label the run trains on), what share
of all the teacher's training errors it holds, the share of flipped labels
(label-noise runs), and its overlap with the run's previous selection.

The teacher is the one the run loaded (WORKDIR/teacher, else the run's
config.teacher.checkpoint); its predictions over the training set take one
forward pass per distinct teacher and are shared by the runs that use it.
`--data` replaces config.data.path when the data has moved since the run.
Reads the runs' files and never writes into them.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))  # acs_jax from this checkout


class ReportError(ValueError):
  """A run directory (or its data or teacher) that cannot be reported."""


def selection_stats(indices: np.ndarray, teacher_right: np.ndarray,
                    noisy: np.ndarray,
                    previous: np.ndarray | None) -> dict:
  """Statistics of one selection.

  Args:
    indices: [M] int selected training indices.
    teacher_right: bool [N]: the teacher's top-1 equals the training label.
    noisy: bool [N]: the label was flipped by label noise.
    previous: the run's previous selection's indices, or None.

  Returns:
    size, teacher_top1 (on the selection), teacher_wrong (count),
    share_of_teacher_wrong (of all N images the teacher gets wrong), flipped
    (share of the selection with a flipped label), shared_with_previous
    (|A & B| / |A|, None without a previous selection).
  """
  idx = np.unique(np.asarray(indices, np.int64))
  if idx.size != np.size(indices):
    raise ReportError("a selection holds an index twice")
  if idx.size and (idx[0] < 0 or idx[-1] >= teacher_right.size):
    raise ReportError(f"a selection holds an index outside [0, "
                      f"{teacher_right.size})")
  wrong = int(np.count_nonzero(~teacher_right[idx]))
  total_wrong = int(np.count_nonzero(~teacher_right))
  shared = None
  if previous is not None and idx.size:
    shared = np.intersect1d(idx, previous).size / idx.size
  return {
      "size": int(idx.size),
      "teacher_top1": 1.0 - wrong / idx.size if idx.size else None,
      "teacher_wrong": wrong,
      "share_of_teacher_wrong": wrong / total_wrong if total_wrong else None,
      "flipped": (float(np.count_nonzero(noisy[idx])) / idx.size
                  if idx.size else None),
      "shared_with_previous": shared,
  }


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ReportError(f"{path}: unreadable ({e})") from None


def read_metrics(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, "metrics.jsonl")
  try:
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]
  except (OSError, json.JSONDecodeError) as e:
    raise ReportError(f"{path}: unreadable ({e})") from None


def run_timing(records: list[dict], summary: dict) -> dict:
  """Test top-1 per evaluated epoch and the QAT seconds by phase."""
  train = [r for r in records if r.get("stage") == "train"]
  curve = {int(r["epoch"]): float(r["test_top1"]) for r in train
           if "test_top1" in r}
  out = {k: float(sum(r.get(f"seconds_{k}", 0.0) for r in train))
         for k in ("select", "train", "eval")}
  qat = summary.get("seconds_student")
  out["qat"] = float(qat) if qat is not None else None
  out["select_share"] = out["select"] / qat if qat else None
  return {"curve": curve, "seconds": out}


def saved_selections(run_dir: str) -> list[tuple[dict, np.ndarray]]:
  """(record, indices) of every selection the run saved, by epoch.

  The indices are `selections/selection_epoch<E>.npy` (every selector writes
  them); the record (epoch, beta, ...) is the run's selections.jsonl line of
  that epoch, or just the epoch where the run has none.
  """
  records = {}
  path = os.path.join(run_dir, "selections.jsonl")
  if os.path.isfile(path):
    try:
      with open(path) as f:
        for line in f:
          if line.strip():
            record = json.loads(line)
            records[int(record["epoch"])] = record
    except (OSError, ValueError, KeyError) as e:
      raise ReportError(f"{path}: unreadable ({e})") from None
  out = []
  for npy in glob.glob(os.path.join(run_dir, "selections",
                                    "selection_epoch*.npy")):
    stem = os.path.basename(npy)[len("selection_epoch"):-len(".npy")]
    if not stem.isdigit():
      continue
    epoch = int(stem)
    out.append((records.get(epoch, {"epoch": epoch}), np.load(npy)))
  return sorted(out, key=lambda item: item[0]["epoch"])


def _teacher_predictions(config, workdir: str, data_path: str | None):
  """(source, predicted class [N], training labels [N], noisy [N])."""
  import jax  # pylint: disable=g-import-not-at-top
  from acs_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from acs_jax import config_lib, models, quant, rngs, sharding, train  # pylint: disable=g-import-not-at-top
  from acs_jax.coreset import scores  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets, input_pipeline  # pylint: disable=g-import-not-at-top

  if data_path:
    config.data.path = data_path
  try:
    dataset = datasets.load_dataset(config_lib.data_options(config.data))
    source = train.teacher_source(config, workdir)
    if not source:
      raise ReportError(f"{workdir}: the run trained its teacher and kept no "
                        "WORKDIR/teacher")
    meta = ckpt_lib.read_teacher_meta(source)
    dataset = config_lib.resolve_normalization(
        dataset, config.data.normalization, meta, source)
    qc = quant.from_config(config.quant).as_float()
    model = models.model_from_config(config, dataset.num_classes,
                                     dataset.image_shape[0], qc)
    like = jax.eval_shape(lambda: models.init_variables(
        model, dataset.image_shape, rngs.key(0, "teacher_init")))
    variables, _ = ckpt_lib.load_teacher(source, like, meta)
  except (ValueError, FileNotFoundError) as e:  # CheckpointError included
    raise ReportError(f"{workdir}: its teacher or data cannot be loaded: "
                      f"{e}") from None
  mesh = sharding.make_mesh()
  batch = int(config.train.eval_batch_size or config.train.batch_size)
  batch -= batch % mesh.devices.size
  batches = input_pipeline.make_eval_iterator(dataset, "train",
                                              batch_size=batch)
  probs = scores.compute_teacher_probs(
      lambda v, x: model.apply(v, x, train=False),
      sharding.replicate(variables, mesh), batches,
      dataset.num_examples("train"), mesh)
  return (source, np.argmax(probs, axis=-1),
          np.asarray(dataset.train_labels()), np.asarray(dataset.noisy_mask))


def report(run_dirs: list[str], data_path: str | None = None) -> list[dict]:
  """One dict per run: its config summary, timing and selections."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from acs_jax import train  # pylint: disable=g-import-not-at-top
  teachers = {}
  out = []
  for run_dir in run_dirs:
    run_dir = os.path.abspath(run_dir)
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
      raise ReportError(f"{run_dir} is not a run's workdir: it has no "
                        "config.json")
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(summary_path):
      raise ReportError(f"{run_dir} has not finished: it has no summary.json")
    config = ml_collections.ConfigDict(_read_json(config_path))
    summary = _read_json(summary_path)
    key = (train.teacher_source(config, run_dir),
           data_path or config.data.path)
    if key not in teachers:
      teachers[key] = _teacher_predictions(config, run_dir, data_path)
    source, pred, labels, noisy = teachers[key]
    right = pred == labels
    selections, previous = [], None
    for record, idx in saved_selections(run_dir):
      stats = selection_stats(idx, right, noisy, previous)
      selections.append({"epoch": int(record["epoch"]),
                         "beta": record.get("beta"), **stats})
      previous = np.unique(idx)
    out.append({
        "run": os.path.basename(run_dir), "selector": config.coreset.selector,
        "fraction": config.coreset.fraction, "seed": config.seed,
        "every": config.coreset.data_update_epochs,
        "loss": config.train.loss, "teacher": source,
        "teacher_train_top1": float(np.mean(right)),
        "teacher_test_top1": summary.get("teacher_test_top1"),
        "final_top1": summary.get("student_final_test_top1"),
        "best_top1": summary.get("student_best_test_top1"),
        **run_timing(read_metrics(run_dir), summary),
        "selections": selections})
  return out


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


def _sec(x) -> str:
  return "-" if x is None else f"{x:.0f}"


def markdown(rows: list[dict]) -> str:
  lines = ["| run | loss | R | final top-1 | best | test top-1 by epoch | "
           "select s | train s | eval s | QAT s | select share |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    s = r["seconds"]
    curve = " ".join(f"{e}:{100 * v:.2f}" for e, v in sorted(r["curve"].items()))
    lines.append(
        f"| `{r['run']}` | {r['loss']} | {r['every']} | {_pct(r['final_top1'])}"
        f" | {_pct(r['best_top1'])} | {curve} | {s['select']:.0f} | "
        f"{s['train']:.0f} | {s['eval']:.0f} | "
        f"{_sec(s['qat'])} | {_pct(s['select_share'])} |")
  lines += ["", "| run | epoch | beta | size | teacher top-1 on it | teacher "
            "wrong | share of all teacher errors | flipped labels | shared "
            "with previous |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    for sel in r["selections"]:
      beta = "-" if sel["beta"] is None else f"{sel['beta']:.3f}"
      lines.append(
          f"| `{r['run']}` | {sel['epoch']} | {beta} | {sel['size']} | "
          f"{_pct(sel['teacher_top1'])} | {sel['teacher_wrong']} | "
          f"{_pct(sel['share_of_teacher_wrong'])} | {_pct(sel['flipped'])} | "
          f"{_pct(sel['shared_with_previous'])} |")
  teachers = sorted({(r["teacher"], r["teacher_train_top1"]) for r in rows})
  lines.append("")
  for source, top1 in teachers:
    lines.append(f"Teacher {source}: training-set top-1 {_pct(top1)} % "
                 "(unaugmented, against the labels the runs train on).")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0].strip(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="+", help="run workdirs")
  parser.add_argument("--data", default=None,
                      help="replaces config.data.path of every run")
  parser.add_argument("--json", default=None,
                      help="also write the report as JSON to this file")
  args = parser.parse_args(argv)
  if args.json and not os.path.isdir(os.path.dirname(
      os.path.abspath(args.json))):
    print(f"error: --json={args.json!r}: its folder does not exist",
          file=sys.stderr)
    return 2
  from acs_jax import env  # pylint: disable=g-import-not-at-top
  env.configure_jax()
  env.quiet_library_logs()
  try:
    rows = report(args.runs, args.data)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(markdown(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
