"""Datasets and tf.data input pipelines over coreset sample indices."""
from acs_jax import env as _env

# Before TensorFlow is first imported (by the modules below).
_env.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from acs_jax.data.labels import apply_label_noise
from acs_jax.data.datasets import AUGMENTS
from acs_jax.data.datasets import DataOptions
from acs_jax.data.datasets import Dataset
from acs_jax.data.labels import label_noise_offsets
from acs_jax.data.datasets import load_dataset
from acs_jax.data.datasets import SOURCES
from acs_jax.data.labels import shift_labels
from acs_jax.data.datasets import TFDS_NAMES
from acs_jax.data.datasets import with_label_noise
from acs_jax.data.input_pipeline import eval_steps
from acs_jax.data.input_pipeline import make_eval_dataset
from acs_jax.data.input_pipeline import make_eval_iterator
from acs_jax.data.input_pipeline import make_train_dataset
from acs_jax.data.input_pipeline import make_train_iterator
from acs_jax.data.input_pipeline import NumpyIterator
from acs_jax.data.input_pipeline import steps_per_epoch

__all__ = [
    "AUGMENTS", "DataOptions", "Dataset", "NumpyIterator", "SOURCES",
    "TFDS_NAMES", "apply_label_noise", "eval_steps", "label_noise_offsets",
    "load_dataset", "make_eval_dataset", "make_eval_iterator",
    "make_train_dataset", "make_train_iterator", "shift_labels",
    "steps_per_epoch", "with_label_noise",
]
