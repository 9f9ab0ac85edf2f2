"""Export a finished run's student, and evaluate an export on the run's data.

    export_and_evaluate(workdir, out)   writes `out`, then evaluates it;
    evaluate_file(workdir, path)        evaluates an existing export.

Both return a report dict (see `format_report`): the integer forward's test
top-1 over the run's whole test set, the fake-quantized (Flax) student's top-1
on the same batches and the one the run reported, the largest logit
difference between the two forwards, and the sizes.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from acs_jax.data import input_pipeline
from acs_jax.export import exporter
from acs_jax.export import format as fmt
from acs_jax.export import int_forward
from acs_jax.export.run import Run, load_run


def _quant_info(run: Run) -> dict[str, Any]:
  q = run.quant
  return {"bits": q.name, "weight_bits": q.weight_bits, "act_bits": q.act_bits,
          "act_signed": run.config.quant.act_signed,
          "per_channel": q.per_channel, "quantize_blocks": q.quantize_blocks,
          "quantize_stem": q.quantize_stem,
          "quantize_shortcut": q.quantize_shortcut,
          "quantize_classifier": q.quantize_classifier}


def build_export(run: Run) -> tuple[dict, dict[str, np.ndarray]]:
  """The (manifest, arrays) of `run`'s student, nothing written."""
  ds = run.dataset
  manifest, arrays = exporter.export_variables(
      run.model, run.variables, name=run.config.model.name,
      image_shape=ds.image_shape,
      input_info={"layout": "NHWC", "pixel_scale": 255.0,
                  "mean": [float(v) for v in ds.mean],
                  "std": [float(v) for v in ds.std],
                  "normalization": run.normalization},
      quant_info=_quant_info(run),
      source={"workdir": run.workdir, "checkpoint": run.checkpoint,
              "epoch": run.epoch, "dataset": ds.name,
              "num_test": int(ds.num_test),
              "reported_test_top1": run.reported_top1})
  if not any(l["weight"] or l["input_quant"]
             for l in manifest["layers"].values()):
    raise fmt.ExportError(f"the student of {run.workdir} has no quantized "
                          "layer: nothing to export as integers")
  return manifest, arrays


def evaluate(manifest: dict, arrays: dict[str, np.ndarray], dataset,
             batch_size: int, fake: tuple[Any, dict] | None = None,
             impl: str = "auto") -> dict[str, Any]:
  """Top-1 of the integer forward over the test split (every sample once).

  With `fake` = (flax model, variables), the fake-quantized model runs on the
  same batches: its top-1, the largest |logit difference| and the number of
  samples whose argmax differs are reported too.
  """
  params = int_forward.prepare(manifest, arrays)
  forward = jax.jit(int_forward.make_forward(manifest, impl))
  fake_fn = None
  if fake is not None:
    model, variables = fake
    fake_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out = {"count": 0, "correct": 0, "fake_correct": 0, "max_abs_diff": 0.0,
         "max_abs_logit": 0.0, "argmax_differs": 0}
  it = input_pipeline.make_eval_iterator(dataset, "test",
                                         batch_size=batch_size)
  for batch in it:
    mask = np.asarray(batch["mask"], bool)
    labels = np.asarray(batch["label"])[mask]
    logits = np.asarray(forward(params, batch["image"]))[mask]
    out["count"] += int(mask.sum())
    out["correct"] += int(np.sum(np.argmax(logits, -1) == labels))
    if fake_fn is not None:
      ref = np.asarray(fake_fn(variables, batch["image"]))[mask]
      out["fake_correct"] += int(np.sum(np.argmax(ref, -1) == labels))
      out["max_abs_diff"] = max(out["max_abs_diff"],
                                float(np.max(np.abs(logits - ref),
                                             initial=0.0)))
      out["max_abs_logit"] = max(out["max_abs_logit"],
                                 float(np.max(np.abs(ref), initial=0.0)))
      out["argmax_differs"] += int(np.sum(np.argmax(logits, -1)
                                          != np.argmax(ref, -1)))
  n = max(out["count"], 1)
  result = {"top1": out["correct"] / n, "count": out["count"]}
  if fake_fn is not None:
    result.update(
        fake_top1=out["fake_correct"] / n, max_abs_diff=out["max_abs_diff"],
        max_rel_diff=out["max_abs_diff"] / max(out["max_abs_logit"], 1e-30),
        argmax_differs=out["argmax_differs"])
  return result


def _batch_size(run: Run, batch_size: int | None) -> int:
  b = batch_size or run.config.train.eval_batch_size or (
      run.config.train.batch_size)
  if b < 1:
    raise fmt.ExportError(f"--batch_size={b} must be >= 1")
  return int(b)


def _report(run: Run, manifest: dict, arrays: dict, path: str,
            batch_size: int | None, impl: str) -> dict[str, Any]:
  result = evaluate(manifest, arrays, run.dataset, _batch_size(run,
                                                               batch_size),
                    fake=(run.model, run.variables), impl=impl)
  return {**result, **fmt.sizes(manifest, arrays), "path": path,
          "file_bytes": os.path.getsize(path), "reported_top1": run.reported_top1, "bits": manifest["quant"]["bits"],
          "model": manifest["model"]["name"], "checkpoint": run.checkpoint,
          "epoch": run.epoch, "dataset": run.dataset.name}


def export_and_evaluate(workdir: str, out: str, checkpoint: str = "last",
                        batch_size: int | None = None, impl: str = "auto"
                        ) -> dict[str, Any]:
  """Exports the run's student to `out` (a new file), then evaluates it."""
  fmt.check_out_path(out)  # before any work
  run = load_run(workdir, checkpoint)
  manifest, arrays = build_export(run)
  path = fmt.write_export(out, manifest, arrays)
  manifest, arrays = fmt.read_export(path)  # evaluate what is on disk
  return _report(run, manifest, arrays, path, batch_size, impl)


def evaluate_file(workdir: str, path: str, batch_size: int | None = None,
                  impl: str = "auto") -> dict[str, Any]:
  """Evaluates the export `path` of the run in `workdir`; writes nothing."""
  manifest, arrays = fmt.read_export(path)
  run = load_run(workdir, manifest.get("source", {}).get("checkpoint",
                                                         "last"))
  ds = run.dataset
  want = {"num_classes": ds.num_classes, "image_shape": list(ds.image_shape),
          "mean": [float(v) for v in ds.mean],
          "std": [float(v) for v in ds.std]}
  have = {"num_classes": manifest["model"]["num_classes"],
          "image_shape": manifest["model"]["image_shape"],
          "mean": manifest["input"]["mean"], "std": manifest["input"]["std"]}
  wrong = [k for k in want if np.shape(want[k]) != np.shape(have[k])
           or not np.allclose(want[k], have[k], rtol=0, atol=1e-7)]
  if wrong:
    raise fmt.ExportError(
        f"{os.path.abspath(path)} is not an export of the run in {workdir}: "
        + "; ".join(f"{k} {have[k]} there, {want[k]} in the run"
                    for k in wrong))
  return _report(run, manifest, arrays, os.path.abspath(path), batch_size,
                 impl)


def format_report(r: dict[str, Any]) -> list[str]:
  ratio = r["fp32_bytes"] / max(r["arrays_bytes"], 1)
  return [
      f"export: {r['path']} ({r['model']} {r['bits']}, {r['checkpoint']} "
      f"checkpoint, epoch {r['epoch']})",
      f"integer top-1:    {r['top1']:.4f} ({r['count']} {r['dataset']} test "
      "samples)",
      f"fake-quant top-1: {r['fake_top1']:.4f} (this evaluation), "
      + (f"{r['reported_top1']:.4f}" if r["reported_top1"] is not None
         else "n/a") + " (the run's metrics)",
      f"size: {r['arrays_bytes']} bytes of arrays ({r['codes_bytes']} of "
      f"them packed weight codes), {r['file_bytes']} bytes file; fp32: "
      f"{r['fp32_bytes']} bytes of arrays ({ratio:.1f}x)",
      f"max |logit difference| integer vs fake-quant: {r['max_abs_diff']:.3g} "
      f"({r['max_rel_diff']:.3g} of the largest |logit|); argmax differs "
      f"for {r['argmax_differs']} samples",
  ]
