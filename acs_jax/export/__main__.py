r"""python -m acs_jax.export --workdir=RUN --out=student.npz [--checkpoint=best]

Exports the finished student of the run in RUN as integer codes (an .npz file
with a JSON manifest, see docs/export.md), then evaluates the exported file
with the integer forward on the run's test set and prints its top-1 next to
the fake-quantized student's, the sizes (exported vs fp32) and the largest
logit difference between the two forwards.

    python -m acs_jax.export --workdir=RUN --evaluate=student.npz

evaluates an existing export instead (nothing is written). Any bad input (no
finished student, a float run, an existing --out, a damaged export file) is
one line on stderr and exit status 2; nothing existing is changed.
"""
import sys

from absl import app
from absl import flags

from acs_jax import env

env.quiet_tensorflow()
env.set_xla_defaults()  # before any JAX backend starts

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's workdir (python -m "
                    "acs_jax.main --workdir=...).", required=True)
flags.DEFINE_string("out", None, "Export file to create (e.g. student.npz); "
                    "never overwritten.")
flags.DEFINE_string("evaluate", None, "Evaluate this existing export file "
                    "instead of exporting.")
flags.DEFINE_enum("checkpoint", "last", ["last", "best"],
                  "Which student: the last epoch's or the best by test top-1.")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the "
                     "run's eval batch size).")
flags.DEFINE_enum("conv_impl", "auto", ["auto", "conv", "patches"],
                  "Integer conv: lax.conv_general_dilated ('conv'), windows "
                  "+ integer dot ('patches'), or 'auto' (patches on GPU).")


def parse_flags(argv):
  """absl's parser, with a bad flag as one message and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (FLAGS.out is None) == (FLAGS.evaluate is None):
    print("error: give exactly one of --out=FILE (export, then evaluate) and "
          "--evaluate=FILE (evaluate an existing export)", file=sys.stderr)
    sys.exit(2)
  env.configure_jax()
  env.quiet_library_logs()
  from acs_jax.export import tool  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.out is not None:
      report = tool.export_and_evaluate(
          FLAGS.workdir, FLAGS.out, FLAGS.checkpoint, FLAGS.batch_size,
          FLAGS.conv_impl)
    else:
      report = tool.evaluate_file(FLAGS.workdir, FLAGS.evaluate,
                                  FLAGS.batch_size, FLAGS.conv_impl)
  except (ValueError, FileNotFoundError) as e:  # ExportError, ConfigError...
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(tool.format_report(report)))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
