"""The sweep's reports: results.csv, results.md (mean +- std over seeds) and
the plots of accuracy against data fraction and against QAT wall time, from
the finished runs' summary.json and metrics.jsonl (acs_jax.sweep writes them
after every sweep; they can be rewritten from a workdir at any time).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Sequence

import numpy as np

CSV_FIELDS = (
    "sweep", "run", "selector", "fraction", "seed", "label_noise",
    "student_final_top1", "student_best_top1", "teacher_top1",
    "teacher_pretrained_top1", "teacher_trained_here", "seconds_teacher",
    "seconds_select", "seconds_train", "seconds_eval", "seconds_total",
    "train_epochs", "coreset_size")


def format_number(x: float) -> str:
  """0.1 -> "0.1", 1 -> "1.0": short, and still a float in a run name."""
  s = f"{float(x):.6g}"
  return s if any(ch in s for ch in ".e") else s + ".0"


def _seconds(records: list[dict], stage: str, key: str) -> float:
  return float(sum(r.get(key) or 0.0 for r in records
                   if r.get("stage") == stage))


def collect(workdir: str, runs: Sequence[Any], sweep_name: str
            ) -> list[dict[str, Any]]:
  """One row per finished run (`runs`: sweep.plan's), from its summary.json
  and metrics.jsonl."""
  from acs_jax.metrics import read_jsonl  # pylint: disable=g-import-not-at-top
  rows = []
  for run in runs:
    run_dir = os.path.join(workdir, "runs", run.name)
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_path):
      continue
    with open(summary_path) as f:
      summary = json.load(f)
    records = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    student = [r for r in records if r.get("stage") == "train"]
    teacher_lines = [r for r in records if r.get("stage") == "teacher"]
    teacher_s = sum(_seconds(records, "teacher", k)
                    for k in ("seconds_select", "seconds_train",
                              "seconds_eval"))
    rows.append({
        "sweep": sweep_name, "run": run.name, "selector": run.selector,
        "fraction": run.fraction, "seed": run.seed,
        "label_noise": run.label_noise,
        "student_final_top1": summary.get("student_final_test_top1"),
        "student_best_top1": summary.get("student_best_test_top1"),
        "teacher_top1": summary.get("teacher_test_top1"),
        "teacher_pretrained_top1": summary.get("teacher_pretrained_test_top1"),
        "teacher_trained_here": bool(teacher_lines),
        "seconds_teacher": teacher_s,
        # Scoring (student forward over the training set, plus the teacher's
        # cached softmax once) happens inside the selection step.
        "seconds_select": _seconds(records, "train", "seconds_select"),
        "seconds_train": _seconds(records, "train", "seconds_train"),
        "seconds_eval": _seconds(records, "train", "seconds_eval"),
        "seconds_total": summary.get("seconds_total"),
        "train_epochs": len(student),
        "coreset_size": student[-1].get("coreset_size") if student else None,
    })
  return rows


def write_csv(path: str, rows: Sequence[dict]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for row in rows:
      w.writerow({k: row.get(k) for k in CSV_FIELDS})


def _stats(values: Sequence[float | None]) -> tuple[float, float, int]:
  """Mean, sample std (0 for one value) and count of the non-missing values."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return math.nan, math.nan, 0
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def group(rows: Sequence[dict]) -> list[dict[str, Any]]:
  """Rows grouped by (label_noise, selector, fraction), in first-seen order."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    key = (row["label_noise"], row["selector"], row["fraction"])
    groups.setdefault(key, []).append(row)
  out = []
  for (noise, selector, fraction), members in groups.items():
    g = {"label_noise": noise, "selector": selector, "fraction": fraction,
         "seeds": [m["seed"] for m in members]}
    for key in ("student_final_top1", "student_best_top1", "teacher_top1",
                "seconds_select", "seconds_train", "seconds_eval"):
      g[key] = _stats([m[key] for m in members])
    out.append(g)
  return out


def _pct(stat: tuple[float, float, int]) -> str:
  mean, std, n = stat
  if not n:
    return "n/a"
  return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def _sec(stat: tuple[float, float, int]) -> str:
  mean, std, n = stat
  if not n:
    return "n/a"
  return f"{mean:.0f}" + (f" ± {std:.0f}" if n > 1 else "")


def markdown_table(rows: Sequence[dict]) -> str:
  """results.md: mean ± std over seeds per (selector, fraction[, noise])."""
  groups = group(rows)
  noisy = len({r["label_noise"] for r in rows}) > 1 or any(
      r["label_noise"] for r in rows)
  lines = []
  teachers = [r for r in rows if r["teacher_trained_here"]]
  for t in teachers:
    how = f"trained in run `{t['run']}`"
    if t.get("teacher_pretrained_top1") is not None:
      how = (f"pretrained, {100 * t['teacher_pretrained_top1']:.2f} % as "
             f"loaded, fine-tuned in run `{t['run']}`")
    lines.append(
        f"FP teacher ({how}): test top-1 "
        f"{100 * t['teacher_top1']:.2f} %, {t['seconds_teacher']:.0f} s.")
  if not teachers and rows:
    lines.append(f"FP teacher (loaded): test top-1 "
                 f"{100 * rows[0]['teacher_top1']:.2f} %.")
  lines.append("")
  head = ["selector", "fraction"] + (["label noise"] if noisy else []) + [
      "seeds", "final top-1 (%)", "best top-1 (%)", "select (s)",
      "train (s)", "eval (s)"]
  lines.append("| " + " | ".join(head) + " |")
  lines.append("|" + "|".join("---" for _ in head) + "|")
  for g in groups:
    cells = [g["selector"], format_number(g["fraction"])]
    if noisy:
      cells.append(format_number(g["label_noise"]))
    cells += [str(len(g["seeds"])), _pct(g["student_final_top1"]),
              _pct(g["student_best_top1"]), _sec(g["seconds_select"]),
              _sec(g["seconds_train"]), _sec(g["seconds_eval"])]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Top-1 on the test set, mean ± sample std over seeds (no ± "
               "with one seed); seconds are sums over the QAT epochs of "
               "metrics.jsonl (select includes scoring the training set).")
  return "\n".join(lines) + "\n"


def plot(workdir: str, rows: Sequence[dict]) -> list[str]:
  """accuracy_vs_fraction.png and accuracy_vs_time.png (one panel per noise)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Files only: no display on servers or in CI.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  groups = group(rows)
  noises = sorted({g["label_noise"] for g in groups})
  selectors = list(dict.fromkeys(g["selector"] for g in groups
                                 if g["selector"] != "full"))
  colors = {name: f"C{i}" for i, name in enumerate(selectors)}
  paths = []

  def panels():
    fig, axes = plt.subplots(1, len(noises), figsize=(5.5 * len(noises), 4.2),
                             squeeze=False)
    return fig, axes[0]

  def finish(ax, noise, xlabel):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.0), min(hi, 100.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if len(noises) > 1 or noise:
      ax.set_title(f"label noise {format_number(noise)}")

  # Accuracy vs data fraction, with the paper's reference lines.
  fig, axes = panels()
  for ax, noise in zip(axes, noises):
    mine = [g for g in groups if g["label_noise"] == noise]
    for name in selectors:
      pts = sorted((g["fraction"], g["student_final_top1"]) for g in mine
                   if g["selector"] == name)
      ax.errorbar([100 * f for f, _ in pts], [100 * s[0] for _, s in pts],
                  yerr=[100 * s[1] for _, s in pts], marker="o", capsize=3,
                  color=colors[name], label=name)
    teacher = _stats([r["teacher_top1"] for r in rows
                      if r["label_noise"] == noise])
    if teacher[2]:
      ax.axhline(100 * teacher[0], color="k", ls="--", label="FP teacher")
    for g in mine:
      if g["selector"] == "full":
        ax.axhline(100 * g["student_final_top1"][0], color="gray", ls=":",
                   label="full-data QAT")
    ax.set_xticks(sorted({100 * g["fraction"] for g in mine
                          if g["selector"] != "full"}))
    finish(ax, noise, "data fraction (%)")
  fig.tight_layout()
  paths.append(os.path.join(workdir, "accuracy_vs_fraction.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  # Accuracy vs the student's wall time (selection + training, no eval).
  def qat_seconds(g):
    return g["seconds_select"][0] + g["seconds_train"][0]
  minutes = max(qat_seconds(g) for g in groups) > 600
  scale = 60.0 if minutes else 1.0
  fig, axes = panels()
  for ax, noise in zip(axes, noises):
    mine = [g for g in groups if g["label_noise"] == noise]
    for name in selectors + (["full"] if any(g["selector"] == "full"
                                             for g in mine) else []):
      # In fraction order: the line shows what more data costs and buys.
      pts = sorted((g["fraction"], qat_seconds(g) / scale,
                    g["student_final_top1"]) for g in mine
                   if g["selector"] == name)
      full = name == "full"
      ax.errorbar([t for _, t, _ in pts], [100 * a[0] for _, _, a in pts],
                  yerr=[100 * a[1] for _, _, a in pts],
                  marker="*" if full else "o", ms=10 if full else 6,
                  capsize=3, ls="none" if full else "-",
                  color="gray" if full else colors[name],
                  label="full data" if full else name)
      for f, t, a in pts:
        ax.annotate(f"{100 * f:g}%", (t, 100 * a[0]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    finish(ax, noise, "QAT wall time: selection + training "
                      f"({'min' if minutes else 's'})")
  fig.tight_layout()
  paths.append(os.path.join(workdir, "accuracy_vs_time.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def write_reports(workdir: str, rows: Sequence[dict]) -> None:
  write_csv(os.path.join(workdir, "results.csv"), rows)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown_table(rows))
  if rows:
    plot(workdir, rows)
