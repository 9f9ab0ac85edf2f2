"""Run outputs: per-epoch JSON lines, TensorBoard scalars, progress bars."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable

import jax
import tqdm

from acs_jax import env


def progress(iterable: Iterable, **kw):
  """A tqdm bar with ETA on stderr, on the first process only."""
  return tqdm.tqdm(iterable, disable=jax.process_index() != 0,
                   file=sys.stderr, dynamic_ncols=True, **kw)


def _clean(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def read_jsonl(path: str) -> list[dict]:
  """The records of a .jsonl file; [] when it does not exist."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Writes WORKDIR/metrics.jsonl, selections.jsonl, summary.json and tb/.

  Only process 0 writes; every process may call it.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self._tb = None

  def _tensorboard(self):
    """The event-file writer, created at the first record (so a run that is
    refused before its first epoch leaves no new file behind)."""
    if self._tb is None and self.enabled:
      tf = env.hide_gpus_from_tensorflow()
      from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
      self._tf = tf
      os.makedirs(self.workdir, exist_ok=True)
      self._tb = tf.summary.create_file_writer(os.path.join(self.workdir, "tb"))
      self._scalar_meta = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name="scalars"))
    return self._tb

  def _append(self, name: str, record: dict) -> None:
    if not self.enabled:
      return
    record = {k: _clean(v) for k, v in record.items()}
    with open(os.path.join(self.workdir, name), "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")

  def write(self, record: dict) -> None:
    """One epoch's metrics (a JSON line, and TB scalars at record['step'])."""
    self._append("metrics.jsonl", record)
    tb = self._tensorboard()
    if tb is None:
      return
    stage = record.get("stage", "train")
    with tb.as_default():
      for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          # tf.summary.scalar needs the tensorboard package; the core write
          # op with the "scalars" plugin metadata gives TensorBoard the same.
          self._tf.summary.write(f"{stage}/{k}",
                                 self._tf.constant(float(v), self._tf.float32),
                                 step=int(record.get("step", 0)),
                                 metadata=self._scalar_meta)
    tb.flush()

  def rewind(self, stage: str, epoch: int) -> None:
    """Drops records past `epoch` of `stage` (a resumed run redoes them).

    Epoch records carry the number of finished epochs; selections the
    0-based epoch at whose start they ran.
    """
    if not self.enabled:
      return
    for name, keep in (
        ("metrics.jsonl",
         lambda r: r.get("stage") != stage or r.get("epoch", 0) <= epoch),
        ("selections.jsonl",
         lambda r: stage != "train" or r.get("epoch", 0) < epoch)):
      path = os.path.join(self.workdir, name)
      records = read_jsonl(path)
      kept = [r for r in records if keep(r)]
      if len(kept) != len(records):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
          f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        os.replace(tmp, path)

  def write_selection(self, record: dict) -> None:
    self._append("selections.jsonl", record)

  def write_summary(self, summary: dict) -> None:
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, "summary.json"), "w") as f:
      json.dump({k: _clean(v) for k, v in summary.items()}, f, indent=2,
                sort_keys=True)
    print(format_summary(summary), flush=True)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def format_summary(summary: dict) -> str:
  """A two-column text table of the final summary."""
  rows = []
  for k, v in summary.items():
    if isinstance(v, float):
      v = f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    rows.append((k, str(v)))
  width = max(len(k) for k, _ in rows)
  line = "-" * (width + 3 + max(len(v) for _, v in rows))
  body = "\n".join(f"{k.ljust(width)} | {v}" for k, v in rows)
  return f"{line}\n{body}\n{line}"
