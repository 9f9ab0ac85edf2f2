"""End to end on a random-access dataset: TFDS imagenet2012, prepared here.

The fake ILSVRC2012 tars (4 synsets x 8 training images, 8 validation
images) go through the real TFDS imagenet2012 builder into array_record, once
per module; then the whole procedure runs on it: teacher, QAT with ACS and one
re-selection, resume, and a two-selector sweep. The teacher is a PyTorch
network in torchvision's ResNet layout (ImageNet stem, `downsample`
shortcuts, `fc`), saved with torch.save, imported with
acs_jax.pretrained.convert and fine-tuned for one epoch. The dataset keeps
1000 classes (TFDS imagenet2012 always has them); the model is resnet_tiny
at 16x16.
"""
import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from acs_jax import rngs, sweep, train
from acs_jax.data import datasets, input_pipeline
from acs_jax.pretrained import convert
from data_test import write_fake_imagenet_tars
from tiny_configs import tiny_config

# The first four ImageNet synsets: labels 0..3 of the 1000.
SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361")
PER_CLASS = 8
NUM_TRAIN = len(SYNSETS) * PER_CLASS
NUM_VAL = 8


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  """(data_dir, manual_dir, train labels) of the prepared fake imagenet2012."""
  root = tmp_path_factory.mktemp("imagenet")
  manual = root / "manual"
  manual.mkdir()
  write_fake_imagenet_tars(str(manual), np.random.default_rng(0),
                           synsets=SYNSETS, per_class=PER_CLASS,
                           num_val=NUM_VAL,
                           shape_fn=lambda k: (18 + k % 4, 22, 3))
  data_dir = str(root / "tfds")
  os.makedirs(data_dir)
  ds = datasets.load_dataset({"source": "tfds", "name": "imagenet2012",
                              "data_dir": data_dir,
                              "manual_dir": str(manual), "image_size": 16})
  assert not ds.in_memory and ds.num_classes == 1000
  assert (ds.num_train, ds.num_test) == (NUM_TRAIN, NUM_VAL)
  labels = ds.train_labels()  # through the TFDS source's __getitems__
  np.testing.assert_array_equal(
      labels, [int(ds.train_source[i]["label"]) for i in range(NUM_TRAIN)])
  np.testing.assert_array_equal(np.bincount(labels), [PER_CLASS] * 4)
  return data_dir, str(manual), np.asarray(labels)


@pytest.fixture(scope="module")
def torchvision_teacher(tmp_path_factory):
  """A torchvision-layout ResNet (8/16 channels, 1000 classes), imported."""
  torch = pytest.importorskip("torch")
  from convert_test import TorchResNet, _randomise  # pylint: disable=g-import-not-at-top
  net = _randomise(TorchResNet((1, 1), (8, 16), 1000, "downsample", True,
                               "fc"), seed=5)
  root = tmp_path_factory.mktemp("torchvision")
  torch.save(net.state_dict(), str(root / "resnet_tiny.pth"))
  out = str(root / "teacher")
  meta = convert.import_checkpoint(str(root / "resnet_tiny.pth"), out,
                                   model="resnet_tiny", image_size=16)
  assert (meta["layout"], meta["stem"], meta["normalization"]) == (
      "torchvision_resnet", "imagenet", "imagenet")
  return out


def imagenet_config(data_dir, manual_dir, teacher, **overrides):
  """The imported teacher fine-tuned 1 epoch; QAT 2 epochs of ACS at half
  the data, R = 1."""
  return tiny_config(**{
      "data.source": "tfds", "data.name": "imagenet2012",
      "data.data_dir": data_dir, "data.manual_dir": manual_dir,
      "data.image_size": 16, "model.stem": "imagenet",
      "teacher.checkpoint": teacher, "teacher.finetune_epochs": 1,
      "teacher.batch_size": 8, "train.epochs": 2,
      "train.batch_size": 8, "train.eval_batch_size": 8,
      "train.schedule": "constant", "coreset.selector": "acs",
      "coreset.fraction": 0.5, "coreset.data_update_epochs": 1,
      "checkpoint.every_epochs": 1, **overrides})


class _RecordingSource:
  """A random-access source that logs (phase, index) of every record read."""

  def __init__(self, source, phase, log):
    self._source = source
    self._phase = phase
    self.log = log

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    self.log.append((self._phase["now"], int(i)))
    return self._source[i]

  def __getitems__(self, idx):
    idx = [int(i) for i in idx]
    self.log.extend((self._phase["now"], i) for i in idx)
    return self._source.__getitems__(idx)


def _record_training_reads(monkeypatch):
  """Logs the training records read, tagged ("train", epoch) during a
  student epoch (its data stream's seed), "score" while scoring the training
  split, "other" otherwise (teacher epochs, calibration batch)."""
  phase, log = {"now": "load"}, []
  load, make_train, make_eval = (datasets.load_dataset,
                                 input_pipeline.make_train_iterator,
                                 input_pipeline.make_eval_iterator)

  def load_dataset(*args, **kwargs):
    ds = load(*args, **kwargs)
    return dataclasses.replace(
        ds, train_source=_RecordingSource(ds.train_source, phase, log))

  def train_iterator(dataset, indices, **kw):
    student = kw["seed"] == rngs.host_seed(0, "student_data")  # config.seed 0
    phase["now"] = ("train", kw["epoch"]) if student else "other"
    return make_train(dataset, indices, **kw)

  def eval_iterator(dataset, split, **kw):
    if split == "train":
      phase["now"] = "score"
    return make_eval(dataset, split, **kw)

  monkeypatch.setattr(datasets, "load_dataset", load_dataset)
  monkeypatch.setattr(input_pipeline, "make_train_iterator", train_iterator)
  monkeypatch.setattr(input_pipeline, "make_eval_iterator", eval_iterator)
  return log


@pytest.fixture(scope="module")
def run(imagenet, torchvision_teacher, tmp_path_factory):
  data_dir, manual, _ = imagenet
  workdir = str(tmp_path_factory.mktemp("run"))
  with pytest.MonkeyPatch.context() as mp:
    log = _record_training_reads(mp)
    summary = train.train_and_evaluate(
        imagenet_config(data_dir, manual, torchvision_teacher), workdir)
  return workdir, summary, log


def _selections(workdir):
  d = os.path.join(workdir, "selections")
  return {f: np.load(os.path.join(d, f)) for f in sorted(os.listdir(d))
          if f.endswith(".npy")}


def _final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "checkpoints", "train", "latest", "2", "state")
  with ocp.StandardCheckpointer() as c:
    return jax.tree.map(np.asarray, c.restore(path))


def test_end_to_end_on_random_access_imagenet(imagenet, run):
  _, _, labels = imagenet
  workdir, summary, log = run
  assert summary["dataset"] == "imagenet2012"
  assert math.isfinite(summary["teacher_pretrained_test_top1"])
  with open(os.path.join(workdir, "teacher", "teacher.json")) as f:
    teacher = json.load(f)
  assert teacher["finetuned_from"].endswith("teacher")
  np.testing.assert_allclose(teacher["mean"], (0.485, 0.456, 0.406))
  for key in ("teacher_test_top1", "student_init_test_top1",
              "student_final_test_top1", "student_final_test_top5",
              "student_best_test_top1"):
    assert math.isfinite(summary[key]) and 0.0 <= summary[key] <= 1.0, key
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      "metrics.jsonl"))]
  assert [r["epoch"] for r in records if r["stage"] == "teacher"] == [1]
  student = [r for r in records if r["stage"] == "train"]
  assert [r["epoch"] for r in student] == [1, 2]
  assert [r["coreset_size"] for r in student] == [16, 16]
  assert all(math.isfinite(r["train_loss"]) for r in student)

  # Selections at epochs 0 and 1 (R = 1): valid, balanced, as recorded.
  sels = _selections(workdir)
  assert list(sels) == ["selection_epoch0000.npy", "selection_epoch0001.npy"]
  for name, idx in sels.items():
    assert idx.dtype == np.int64 and len(idx) == 16
    assert len(set(idx.tolist())) == 16
    assert idx.min() >= 0 and idx.max() < NUM_TRAIN
    with open(os.path.join(workdir, "selections",
                           name.replace(".npy", ".json"))) as f:
      rec = json.load(f)
    counts = np.bincount(labels[idx], minlength=4)
    np.testing.assert_array_equal(counts, [PER_CLASS // 2] * 4)
    assert {k: v for k, v in rec["class_counts"].items() if v} == {
        str(k): int(v) for k, v in enumerate(counts) if v}
    assert rec["num_samples"] == NUM_TRAIN

  # Each coreset epoch read exactly the records of its selection.
  for epoch, name in enumerate(sels):
    read = sorted(i for p, i in log if p == ("train", epoch))
    assert read == sorted(sels[name].tolist()), epoch
  # Scoring (two selections) read the whole training split.
  assert sorted(set(i for p, i in log if p == "score")) == list(
      range(NUM_TRAIN))


def test_resume_from_the_first_epoch_matches(imagenet, torchvision_teacher,
                                             run, tmp_path):
  data_dir, manual, _ = imagenet
  ref_dir, ref_summary, _ = run
  workdir = str(tmp_path / "resumed")
  shutil.copytree(ref_dir, workdir)
  # As if the run had died during the second student epoch: its checkpoint
  # and the summary are gone, epoch 1's checkpoint remains.
  ckpts = os.path.join(workdir, "checkpoints", "train")
  shutil.rmtree(os.path.join(ckpts, "latest", "2"))
  if os.path.isdir(os.path.join(ckpts, "best", "2")):
    shutil.rmtree(os.path.join(ckpts, "best", "2"))
  os.remove(os.path.join(workdir, "summary.json"))
  os.remove(os.path.join(workdir, "selections", "selection_epoch0001.npy"))
  summary = train.train_and_evaluate(
      imagenet_config(data_dir, manual, torchvision_teacher), workdir)
  for key in ("student_final_test_top1", "student_final_test_top5",
              "student_best_test_top1"):
    assert summary[key] == ref_summary[key], key
  jax.tree.map(np.testing.assert_array_equal, _final_state(workdir),
               _final_state(ref_dir))
  got, want = _selections(workdir), _selections(ref_dir)
  assert list(got) == list(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  epochs = [json.loads(l)["epoch"] for l in open(os.path.join(
      workdir, "metrics.jsonl")) if '"train"' in l]
  assert epochs == [1, 2]


def test_sweep_random_and_acs(imagenet, run, tmp_path, capsys):
  data_dir, manual, _ = imagenet
  # The teacher fine-tuned by the run above: the sweep trains none, only QAT.
  c = imagenet_config(data_dir, manual, os.path.join(run[0], "teacher"),
                      **{"train.epochs": 1, "teacher.finetune_epochs": 0})
  c.sweep = sweep.sweep_defaults()
  c.sweep.update({"name": "imagenet_tiny", "selectors": ("random", "acs"),
                  "fractions": (0.5,), "seeds": (0,)})
  rows = sweep.run_sweep(c, str(tmp_path))
  assert [r["run"] for r in rows] == ["random_f0.5_s0", "acs_f0.5_s0"]
  for r in rows:
    assert r["coreset_size"] == 16 and r["train_epochs"] == 1
    assert math.isfinite(r["student_final_top1"])
    assert r["teacher_top1"] == run[1]["teacher_test_top1"]
    assert not r["teacher_trained_here"]
  md = open(tmp_path / "results.md").read()
  assert "| random | 0.5 | 1 |" in md and "| acs | 0.5 | 1 |" in md
  assert (tmp_path / "results.csv").exists()
  assert "Sweep imagenet_tiny: 2 runs" in capsys.readouterr().out
