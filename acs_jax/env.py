"""Process-level set-up shared by the entry points and the tests."""
import functools
import os
import re
import sys


def quiet_tensorflow() -> None:
  """Silences TensorFlow's start-up banner (set before TF is imported)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # The oneDNN notice is not covered by TF_CPP_MIN_LOG_LEVEL.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@functools.cache
def hide_gpus_from_tensorflow():
  """Imports TensorFlow kept off every accelerator, so JAX owns their memory.

  TensorFlow would otherwise reserve most of each GPU's memory the first time
  it touches it (flax#445), leaving JAX to run out of memory. Returns the
  `tensorflow` module; runs once per process (cached).

  A first import of TensorFlow also imports Keras's optimizers, and through
  them Keras and scikit-learn (3-5 s on 2 cores), only to register them for
  SavedModels; tf.data needs none of it. That import is skipped (TensorFlow
  catches the ImportError) and nothing else is changed: `tf.keras` and
  `import keras` still load Keras when used.
  """
  quiet_tensorflow()
  blocked = [m for m in _KERAS_EAGER_IMPORTS
             if "tensorflow" not in sys.modules and m not in sys.modules]
  for m in blocked:
    sys.modules[m] = None  # makes `import m` raise ImportError
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    for m in blocked:
      if sys.modules.get(m, 0) is None:
        del sys.modules[m]
  tf.config.set_visible_devices([], "GPU")
  try:
    tf.config.set_visible_devices([], "TPU")
  except (ValueError, RuntimeError):
    pass
  return tf


# What `import tensorflow` imports eagerly for Keras (TF 2.16+): Keras 3 or,
# with TF_USE_LEGACY_KERAS, tf_keras.
_KERAS_EAGER_IMPORTS = ("keras.src.optimizers", "tf_keras.src.optimizers")


class _LazyTensorFlow:
  """`tensorflow`, imported (by `hide_gpus_from_tensorflow`) on first use.

  tf.data is the only TensorFlow this package uses. Importing TensorFlow
  costs seconds (with Keras and scikit-learn behind it), so a process that
  never builds an input pipeline (the benchmark, the checkpoint converter,
  a command stopped by a bad flag) never pays it.
  """

  def __getattr__(self, name):
    return getattr(hide_gpus_from_tensorflow(), name)


def lazy_tensorflow() -> _LazyTensorFlow:
  """What the data modules use as `tf` (see _LazyTensorFlow)."""
  return _LAZY_TF


_LAZY_TF = _LazyTensorFlow()


# XLA:CPU flags set by default, each measured against XLA's own defaults
# (docs/xla_cpu.md; re-check on a new jaxlib with `python tools/probe_xla.py
# flags -- --block official --bits w2a2`). Only for the jaxlib
# versions they were measured on: XLA aborts on a flag it does not know.
#  - YNNPACK's convolutions off (XLA's own Eigen convolutions instead): the
#    weight-gradient convolutions of YNNPACK dominated the ResNet-18 QAT step;
#    without them the step ran 2.96x faster (6.3 -> 18.5 img/s, 2 cores).
XLA_CPU_DEFAULTS = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}
_XLA_CPU_DEFAULTS_JAXLIB = ((0, 10, 0), (0, 11, 0))  # [low, high)
# Set to 0 to keep XLA's own defaults (what tools/probe_xla.py compares).
XLA_DEFAULTS_ENV = "ACS_JAX_XLA_DEFAULTS"


def _jaxlib_version() -> tuple[int, ...] | None:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    text = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return None
  return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def default_xla_flags() -> list[str]:
  """The `--name=value` flags `set_xla_defaults` would add (may be empty)."""
  if os.environ.get(XLA_DEFAULTS_ENV, "1") == "0":
    return []
  version = _jaxlib_version()
  low, high = _XLA_CPU_DEFAULTS_JAXLIB
  if version is None or not low <= version < high:
    return []
  return [f"--{k}={v}" for k, v in XLA_CPU_DEFAULTS.items()]


def set_xla_defaults() -> None:
  """Appends `XLA_CPU_DEFAULTS` to XLA_FLAGS, unless the user sets them.

  Takes effect only before the first JAX backend starts (the entry points
  and tests call it before touching a device). A flag already named in
  XLA_FLAGS is left as the user set it; ACS_JAX_XLA_DEFAULTS=0 adds none.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in default_xla_flags()
           if f[2:].split("=")[0] not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags] + extra).strip()


def without_default_xla_flags(flags: str) -> str:
  """`flags` with the flags `set_xla_defaults` manages removed."""
  return " ".join(f for f in flags.split()
                  if f[2:].split("=")[0] not in XLA_CPU_DEFAULTS)


def configure_jax() -> None:
  """JAX settings every entry point (and the tests) shares.

  XLA:CPU flags: `set_xla_defaults` (effective if no backend has started).

  Non-partitionable threefry: parameters are initialised replicated, and on
  XLA:CPU the partitionable variant compiles each random initialiser ~20x
  slower (seconds per kernel). It also fixes the random streams a config+seed
  gives, whatever the version's default.
  """
  set_xla_defaults()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_threefry_partitionable", False)


def check_configured() -> None:
  """RuntimeError unless `configure_jax` ran: the random streams of a
  config + seed depend on it (python -m acs_jax.main / sweep call it)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_threefry_partitionable:
    raise RuntimeError(
        "jax_threefry_partitionable is on, so this run's random streams would "
        "differ from those of the same config and seed run by python -m "
        "acs_jax.main: call acs_jax.env.configure_jax() first")


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
