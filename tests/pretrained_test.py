"""Starting from a pretrained teacher: option-A shortcuts, the recorded input
normalisation, fine-tuning, teacher-only evaluation, and the real shared
ResNet-20 through `python -m acs_jax.main`."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acs_jax import checkpoint as ckpt_lib
from acs_jax import config_lib, models, quant, train
from acs_jax.data import datasets
from acs_jax.models import resnet
from tiny_configs import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared")
SHARED_R20 = os.path.join(SHARED, "models", "cifar10_resnet",
                          "resnet20-12fca82f.th")
SHARED_CIFAR = os.path.join(SHARED, "data", "cifar10", "cifar10.npz")


# ---------------------------------------------------------------------------
# Models.


def test_zero_pad_shortcut_matches_float64_reference():
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 4))
  got = resnet.zero_pad_shortcut(jnp.asarray(x, jnp.float32), 8, 2)
  ref = np.zeros((2, 3, 3, 8))
  ref[..., 2:6] = x[:, 0::2, 0::2, :]  # (8 - 4) / 2 zero channels per side
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6)
  with pytest.raises(ValueError, match="cannot map 4 channels to 7"):
    resnet.zero_pad_shortcut(jnp.zeros((1, 4, 4, 4)), 7, 2)


@pytest.mark.parametrize("name,count", [("resnet20", 269_722),
                                        ("resnet56", 853_018)])
def test_he_cifar_resnets_have_the_published_size(name, count):
  # The counts of He et al.'s networks (the shared checkpoints' README).
  model = models.build_model(name, num_classes=10, quant=quant.QuantConfig(),
                             shortcut="zero_pad")
  v = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                        jnp.zeros((1, 32, 32, 3)),
                                        train=False))
  assert models.count_params(v["params"]) == count
  projection = models.build_model(name, num_classes=10,
                                  quant=quant.QuantConfig())
  v = jax.eval_shape(lambda: projection.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert models.count_params(v["params"]) > count  # the 1x1 convs + BN


# ---------------------------------------------------------------------------
# A pretrained-style teacher: what the converter writes, for the tiny model.

IMAGENET = datasets.NORMALIZATIONS["imagenet"]


def _config(**kw):
  c = tiny_config(**{"teacher.epochs": 0, "train.epochs": 1, **kw})
  c.model.shortcut = "zero_pad"
  return c


def _pretrained_teacher(directory, config):
  """A teacher directory as acs_jax.pretrained.convert writes it."""
  ds = datasets.load_dataset(config_lib.data_options(config.data))
  model = models.model_from_config(config, ds.num_classes, ds.image_shape[0],
                                   quant.QuantConfig())
  variables = models.init_variables(model, ds.image_shape, seed=7)
  meta = {**train._teacher_meta(config, ds), "mean": list(IMAGENET[0]),
          "std": list(IMAGENET[1]), "normalization": "imagenet",
          "layout": "cifar_resnet"}
  ckpt_lib.save_teacher(str(directory), jax.tree.map(np.asarray, variables),
                        meta)
  return str(directory)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  return _pretrained_teacher(tmp_path_factory.mktemp("t") / "teacher",
                             _config())


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_finetune_records_before_after_and_is_not_repeated(tmp_path,
                                                           teacher_dir):
  c = _config(**{"teacher.checkpoint": teacher_dir,
                 "teacher.finetune_epochs": 1})
  work = str(tmp_path / "run")
  summary = train.train_and_evaluate(c, work)
  with open(os.path.join(work, "teacher", "teacher.json")) as f:
    meta = json.load(f)
  assert meta["finetuned_from"] == teacher_dir
  assert meta["finetune_epochs"] == 1
  assert meta["normalization"] == "imagenet"
  np.testing.assert_allclose(meta["mean"], IMAGENET[0])
  assert meta["pretrained_test_top1"] == summary[
      "teacher_pretrained_test_top1"]
  assert 0 <= summary["student_final_test_top1"] <= 1
  teacher_epochs = [r["epoch"] for r in _metrics(work)
                    if r.get("stage") == "teacher"]
  assert teacher_epochs == [1]
  # A rerun on the same workdir loads the fine-tuned teacher: no second
  # fine-tuning, the same teacher accuracy, no duplicated metrics.
  again = train.train_and_evaluate(c, work)
  assert again["teacher_test_top1"] == summary["teacher_test_top1"]
  assert [r["epoch"] for r in _metrics(work)
          if r.get("stage") == "teacher"] == [1]


def test_teacher_only_evaluation(tmp_path, teacher_dir):
  c = _config(**{"teacher.checkpoint": teacher_dir, "train.epochs": 0})
  summary = train.train_and_evaluate(c, str(tmp_path / "eval"))
  assert 0 <= summary["teacher_test_top1"] <= 1
  assert "student_final_test_top1" not in summary
  assert not os.path.exists(tmp_path / "eval" / "teacher")  # nothing trained


@pytest.mark.parametrize("override,pattern", [
    ({"data.normalization": "cifar10"},
     r"config\.data\.normalization='cifar10' \(mean \(0\.4914.*contradicts "
     r"the teacher .* trained with mean \(0\.485, 0\.456, 0\.406\).*"
     r"\(imagenet\); use 'auto'"),
    ({"data.normalization": "dataset"}, r"'dataset' .*contradicts"),
])
def test_contradicting_normalisation_refused_before_any_work(
    tmp_path, teacher_dir, override, pattern):
  c = _config(**{"teacher.checkpoint": teacher_dir, **override})
  with pytest.raises(config_lib.ConfigError, match=pattern):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_other_architecture_refused_with_the_fix(tmp_path, teacher_dir):
  c = _config(**{"teacher.checkpoint": teacher_dir})
  c.model.shortcut = "projection"
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"shortcut='zero_pad' there, 'projection' here.*"
                     r"--config\.model\.shortcut=zero_pad"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("override,pattern", [
    ({"teacher.finetune_epochs": 2},
     r"finetune_epochs=2 needs config\.teacher\.checkpoint"),
    ({"data.normalization": "mnist"},
     r"config\.data\.normalization='mnist' is not valid; valid values: auto, "
     r"dataset, imagenet, cifar10, cifar100"),
    ({"model.shortcut": "option_a"},
     r"config\.model\.shortcut='option_a' is not valid; valid values: "
     r"projection, zero_pad"),
])
def test_new_config_fields_are_validated(override, pattern):
  c = tiny_config(**override)
  with pytest.raises(config_lib.ConfigError, match=pattern):
    config_lib.validate(c)


# ---------------------------------------------------------------------------
# The real pretrained ResNet-20 on the shared (JPEG) CIFAR-10.


@pytest.mark.skipif(not (os.path.exists(SHARED_R20)
                         and os.path.exists(SHARED_CIFAR)),
                    reason="../shared model or CIFAR-10 copy is not here")
def test_shared_resnet20_scores_81_percent_through_main(tmp_path):
  teacher = str(tmp_path / "r20")
  # 10,000 test images: compiled as a user's run is (conftest turns XLA's
  # optimisations off for the tiny programs of the other tests).
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}
  common = dict(cwd=REPO, env=env, capture_output=True, text=True)
  r = subprocess.run([sys.executable, "-m", "acs_jax.pretrained.convert",
                      f"--checkpoint={SHARED_R20}", f"--out={teacher}"],
                     **common, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  # Orbax's INFO lines (one per file written) are kept out of the output.
  assert "orbax" not in r.stderr, r.stderr[-2000:]
  work = str(tmp_path / "eval")
  r = subprocess.run([
      sys.executable, "-m", "acs_jax.main",
      "--config=configs/r20_cifar10_pretrained.py", f"--workdir={work}",
      f"--config.data.path={SHARED_CIFAR}",
      f"--config.teacher.checkpoint={teacher}",
      "--config.teacher.finetune_epochs=0", "--config.train.epochs=0"],
                     **common, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  with open(os.path.join(work, "summary.json")) as f:
    summary = json.load(f)
  # 81.03 % measured by an independent NumPy forward pass (shared README).
  assert abs(summary["teacher_test_top1"] - 0.8103) <= 0.001


def test_teacher_of_another_class_count_refused(tmp_path, teacher_dir):
  c = _config(**{"teacher.checkpoint": teacher_dir, "data.num_classes": 5})
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"num_classes=4 there, 5 here"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_convert_command_bad_file_exits_2_with_one_line(tmp_path):
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a checkpoint at all")
  r = subprocess.run([sys.executable, "-m", "acs_jax.pretrained.convert",
                      f"--checkpoint={junk}", f"--out={tmp_path / 't'}"],
                     cwd=REPO, capture_output=True, text=True, check=False,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and str(junk) in errors[0], r.stderr[-1000:]
  assert "Traceback" not in r.stderr
  assert sorted(os.listdir(tmp_path)) == ["junk.pth"]
