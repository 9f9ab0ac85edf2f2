"""Entry point: python -m acs_jax.main --config=configs/r18_w2.py --workdir=DIR

Kept short on purpose: flags, the process set-up (TensorFlow off the GPUs,
jax's settings, log filters), optional multi-host initialisation, device
logging, then `train.train_and_evaluate`.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from acs_jax import env

env.quiet_tensorflow()
env.set_xla_defaults()  # before any JAX backend starts

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_bool("distributed", None,
                  "Call jax.distributed.initialize() (multi-process runs); "
                  "default: the ACS_JAX_DISTRIBUTED environment variable.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _flag_error(argv, error: Exception) -> str:
  """One sentence for a bad --config or --config.* flag."""
  from acs_jax import config_lib  # pylint: disable=g-import-not-at-top
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path):
    return (f"--config={path}: no such config file (give the path of one, "
            "e.g. configs/quickstart.py)")
  if path is not None:
    try:
      config = config_lib.load_config(path)
    except Exception as e:  # pylint: disable=broad-except
      return f"--config={path} cannot be loaded: {type(e).__name__}: {e}"
    for arg in argv[1:]:
      if not arg.startswith("--config."):
        continue
      key = arg[len("--config."):].split("=", 1)[0]
      node, seen = config, "config"
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
          fields = ", ".join(sorted(node.keys())) if hasattr(
              node, "keys") else "none (it is a value)"
          return (f"--config.{key}: {seen} has no field {part!r}; its "
                  f"fields: {fields}")
        node, seen = node[part], f"{seen}.{part}"
  return str(error)


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv):
  """absl's parser, with every bad flag as one message and exit status 2.

  (ml_collections reports a missing config file only when the config is
  first read, so that is checked here first.)
  """
  path = _config_path(argv)
  try:
    if path is not None and not os.path.isfile(path):
      raise FileNotFoundError(path)
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {_flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  env.configure_jax()
  env.quiet_library_logs()
  import jax  # pylint: disable=g-import-not-at-top
  from acs_jax import checkpoint, sharding, train  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed(FLAGS.distributed)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, os.path.expanduser(FLAGS.workdir))
  except (train.ConfigError, checkpoint.CheckpointError, train.DivergenceError,
          FileNotFoundError) as e:
    logging.debug("The error's traceback (shown with --verbosity=1):",
                  exc_info=True)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
