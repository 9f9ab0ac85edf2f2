"""Process-level set-up shared by the entry points and the tests."""
import os


def quiet_tensorflow() -> None:
  """Silences TensorFlow's start-up banner (set before TF is imported)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # The oneDNN notice is not covered by TF_CPP_MIN_LOG_LEVEL.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def hide_gpus_from_tensorflow() -> None:
  """Keeps tf.data off every accelerator so JAX owns all device memory.

  TensorFlow would otherwise reserve most of each GPU's memory the first time
  it touches it (flax#445), leaving JAX to run out of memory.
  """
  quiet_tensorflow()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  try:
    tf.config.set_visible_devices([], "TPU")
  except (ValueError, RuntimeError):
    pass


def configure_jax() -> None:
  """JAX settings every entry point (and the tests) shares.

  Non-partitionable threefry: parameters are initialised replicated, and on
  XLA:CPU the partitionable variant compiles each random initialiser ~20x
  slower (seconds per kernel). It also fixes the random streams a config+seed
  gives, whatever the version's default.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_threefry_partitionable", False)


class _DropLibraryInfo:
  """absl-logging filter: INFO lines of chatty libraries (orbax) are dropped."""
  _NOISY = (os.sep + "orbax" + os.sep,)

  def filter(self, record) -> bool:
    import logging  # pylint: disable=g-import-not-at-top
    return record.levelno >= logging.WARNING or not any(
        n in record.pathname for n in self._NOISY)


def quiet_library_logs() -> None:
  """Keeps the run's own INFO log readable (orbax logs every file it moves)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
