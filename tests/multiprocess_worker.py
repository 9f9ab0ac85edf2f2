r"""One process of a multi-process CPU run (launched by multiprocess_test.py).

  python tests/multiprocess_worker.py --coordinator=127.0.0.1:PORT \
      --num_processes=2 --process_id=I --devices=4 --workdir=DIR --out=FILE

Sets up a CPU process with `--devices` fake devices, joins the
jax.distributed cluster over loopback (gloo CPU collectives), runs a tiny
`train.train_and_evaluate` and writes what this process holds at the end as
JSON to --out: a checksum of the final student parameters and BatchNorm
statistics, every coreset it trained on, the steps it ran per epoch and the
summary. The test compares the files of all processes.

Not a pytest module (no `_test` suffix): it must own the process, because
jax.distributed.initialize() has to run before JAX touches any backend.
"""
import argparse
import json
import os
import sys


def _parse():
  p = argparse.ArgumentParser()
  p.add_argument("--coordinator", required=True)
  p.add_argument("--num_processes", type=int, required=True)
  p.add_argument("--process_id", type=int, required=True)
  p.add_argument("--devices", type=int, default=4)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--reload_teacher", type=int, default=1)
  p.add_argument("--selector", default="acs",
                 help="acs (the test), or e.g. forgetting for a manual check")
  return p.parse_args()


def _setup_environment(devices: int) -> None:
  """CPU only, `devices` fake devices; must precede the first jax import."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  os.environ["XLA_FLAGS"] = " ".join(flags)
  from acs_jax import env  # pylint: disable=g-import-not-at-top
  env.set_xla_defaults()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def tiny_config(selector: str = "acs"):
  """Synthetic 8x8 data, resnet_tiny: teacher 1 epoch, student 2 epochs with
  an ACS selection at each (R = 1), so the second one is a re-selection."""
  import tiny_configs  # pylint: disable=g-import-not-at-top
  c = tiny_configs.tiny_config(**{
      "data.num_train": 96, "data.num_test": 40,
      "teacher.epochs": 1, "teacher.batch_size": 16,
      # eval/score batch 16 over 2 processes; 40 test samples -> a padded
      # tail.
      "train.epochs": 2, "train.eval_batch_size": 16,
      # 0.4 of 96 = 40 samples (balanced): not a multiple of the batch, so
      # the remainder is dropped identically on every host.
      "coreset.fraction": 0.4, "coreset.data_update_epochs": 1})
  if selector != "acs":  # one-shot baselines select after a warm-up epoch
    c.coreset.update(selector=selector, warmup_epochs=1)
  return c


def main():
  args = _parse()
  _setup_environment(args.devices)

  import jax  # pylint: disable=g-import-not-at-top
  # Gloo is the default CPU collectives backend of jax 0.10; set explicitly so
  # a different default cannot leave cross-process collectives unimplemented.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Compile time dominates a run this small (two processes share the CI's
  # cores); XLA's optimisation passes buy nothing here.
  jax.config.update("jax_disable_most_optimizations", True)
  # The entry point's path: ACS_JAX_DISTRIBUTED=1 plus the manual-cluster
  # variables -> jax.distributed.initialize(coordinator_address=...,
  # num_processes=..., process_id=...).
  os.environ.update({
      "ACS_JAX_DISTRIBUTED": "1",
      "JAX_COORDINATOR_ADDRESS": args.coordinator,
      "JAX_NUM_PROCESSES": str(args.num_processes),
      "JAX_PROCESS_ID": str(args.process_id)})
  from acs_jax import sharding  # pylint: disable=g-import-not-at-top
  assert sharding.maybe_initialize_distributed()
  assert jax.process_count() == args.num_processes
  assert jax.local_device_count() == args.devices
  assert jax.device_count() == args.devices * args.num_processes

  import numpy as np  # pylint: disable=g-import-not-at-top
  from acs_jax import env  # pylint: disable=g-import-not-at-top
  env.hide_gpus_from_tensorflow()
  env.configure_jax()
  from acs_jax import train  # pylint: disable=g-import-not-at-top
  from acs_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  # Record, without changing behaviour, what this process trained on and
  # holds: the train iterators it consumed, each epoch's indices, the final
  # student state.
  record = {"iterators": [], "coresets": {}, "process": jax.process_index()}
  make_train_iterator = input_pipeline.make_train_iterator

  class _Counting:
    def __init__(self, it, entry):
      self._it, self._entry = it, entry

    def __len__(self):
      return len(self._it)

    def __iter__(self):
      for batch in self._it:
        self._entry["consumed"] += 1
        self._entry["local_rows"] = int(batch["index"].shape[0])
        yield batch

  def counting_iterator(*a, **kw):
    it = make_train_iterator(*a, **kw)
    entry = {"len": len(it), "consumed": 0, "epoch": kw.get("epoch"),
             "process_index": kw.get("process_index", 0),
             "process_count": kw.get("process_count", 1)}
    record["iterators"].append(entry)
    return _Counting(it, entry)

  input_pipeline.make_train_iterator = counting_iterator

  run_epochs = train.run_epochs

  def recording_run_epochs(**kw):
    choose = kw["choose_indices"]

    def choose_indices(epoch, state):
      idx, extra = choose(epoch, state)
      record["coresets"].setdefault(kw["stage"], {})[str(epoch)] = (
          np.asarray(idx).tolist())
      return idx, extra

    state, last, best = run_epochs(**{**kw, "choose_indices": choose_indices})
    record.setdefault("final", {})[kw["stage"]] = _checksums(
        sharding.to_host({"params": state.params,
                          "batch_stats": state.batch_stats}))
    record.setdefault("final_sharding", {})[kw["stage"]] = sorted({
        str(x.sharding.spec) for x in jax.tree.leaves(state.params)})
    return state, last, best

  train.run_epochs = recording_run_epochs

  config = tiny_config(args.selector)
  summary = train.train_and_evaluate(config, args.workdir)
  record["summary"] = summary
  if args.reload_teacher:
    # A later run finds WORKDIR/teacher and loads it instead of training:
    # every process must restore it (orbax's restore is collective too).
    record["reloaded_teacher"] = _reload_teacher(config, args.workdir)
  record["done"] = True
  with open(args.out, "w") as f:
    json.dump(record, f, sort_keys=True)
  # Every process leaves together: no one tears the cluster down early.
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices("multiprocess_worker done")
  jax.distributed.shutdown()
  return 0


def _reload_teacher(config, workdir: str) -> dict:
  """train.teacher_stage on a workdir holding a saved teacher: its checksum
  and test top-1 as loaded on this process."""
  from acs_jax import config_lib, models, quant, sharding, train  # pylint: disable=g-import-not-at-top
  from acs_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from acs_jax.metrics import MetricsWriter  # pylint: disable=g-import-not-at-top
  dataset = datasets.load_dataset(config_lib.data_options(config.data))
  teacher = models.model_from_config(
      config, dataset.num_classes, dataset.image_shape[0],
      quant.from_config(config.quant).as_float())
  mesh = sharding.make_mesh()
  with MetricsWriter(os.path.join(workdir, "reload")) as writer:
    variables, result, _ = train.teacher_stage(
        config, dataset, teacher, mesh, workdir, writer,
        source=train.teacher_source(config, workdir))
  return {"checksum": _checksums(sharding.to_host(variables)),
          "top1": result["top1"]}


def _checksums(tree) -> dict:
  """Per-leaf float64 sums and sums of squares (and the exact bytes' hash)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    name = jax.tree_util.keystr(path)
    out[name] = [float(np.sum(a, dtype=np.float64)),
                 float(np.sum(np.square(a, dtype=np.float64)))]
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(a).tobytes())
  return {"leaves": out, "sha256": digest.hexdigest()}


if __name__ == "__main__":
  sys.exit(main())
