"""Entry point: python -m acs_jax.main --config=configs/r18_w2.py --workdir=DIR

Kept short on purpose: flags, TensorFlow off the GPUs, optional multi-host
initialisation, device logging, then `train.train_and_evaluate`.
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  env.hide_gpus_from_tensorflow()
  import jax  # pylint: disable=g-import-not-at-top
  from acs_jax import checkpoint, sharding, train  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed(FLAGS.distributed)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, os.path.expanduser(FLAGS.workdir))
  except (train.ConfigError, checkpoint.CheckpointError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
