"""PyTorch checkpoints -> teachers: logits equal PyTorch's for every layout.

Each test builds the PyTorch network of one layout (torch modules written
here from the layouts' documented structure; torchvision itself cannot be
imported beside the CPU torch wheel this project tests with), randomises its
weights and BatchNorm statistics, saves it with torch.save, converts the file
with acs_jax.pretrained.convert and compares eval-mode logits on the same
inputs.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acs_jax import checkpoint as ckpt_lib
from acs_jax.pretrained import convert

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_R20 = os.path.join(REPO, "..", "shared", "models", "cifar10_resnet",
                          "resnet20-12fca82f.th")


# ---------------------------------------------------------------------------
# The PyTorch networks of each layout.


class TorchBlock(nn.Module):
  """Basic block; `short` is "downsample" (torchvision), "shortcut" (the
  official code's CIFAR ResNet) or "option_a" (He et al.'s CIFAR ResNets)."""

  def __init__(self, cin, cout, stride, short):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.kind = short
    self.changes = stride != 1 or cin != cout
    if self.changes and short != "option_a":
      setattr(self, short, nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
    self.pad = (cout - cin) // 2

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if not self.changes:
      s = x
    elif self.kind == "option_a":
      s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
    else:
      s = getattr(self, self.kind)(x)
    return F.relu(y + s)


class TorchResNet(nn.Module):

  def __init__(self, blocks, widths, num_classes, short, imagenet_stem,
               head):
    super().__init__()
    k, s, p = (7, 2, 3) if imagenet_stem else (3, 1, 1)
    self.conv1 = nn.Conv2d(3, widths[0], k, s, p, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.pool = nn.MaxPool2d(3, 2, 1) if imagenet_stem else nn.Identity()
    cin = widths[0]
    for i, (n, w) in enumerate(zip(blocks, widths)):
      layers = []
      for j in range(n):
        layers.append(TorchBlock(cin, w, 2 if i and not j else 1, short))
        cin = w
      setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
    self.num_layers = len(blocks)
    self.head_name = head
    setattr(self, head, nn.Linear(cin, num_classes))

  def forward(self, x):
    x = self.pool(F.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_layers):
      x = getattr(self, f"layer{i + 1}")(x)
    return getattr(self, self.head_name)(x.mean(dim=(2, 3)))


def _conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
  layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                      bias=False), nn.BatchNorm2d(cout)]
  return layers + ([nn.ReLU6()] if relu else [])


class TorchInvertedResidual(nn.Module):

  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = round(cin * t)
    self.identity = stride == 1 and cin == cout
    layers = [] if t == 1 else _conv_bn(cin, hidden, 1)
    layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
    layers += _conv_bn(hidden, cout, 1, relu=False)
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.identity else self.conv(x)


class TorchMobileNetV2(nn.Module):
  """The official CIFAR MobileNetV2 (stage 2 at stride 1), width 0.5."""

  def __init__(self, num_classes, width=0.5):
    super().__init__()
    from acs_jax.models import mobilenetv2  # pylint: disable=g-import-not-at-top
    div = mobilenetv2.make_divisible
    cin = div(32 * width)
    layers = [nn.Sequential(*_conv_bn(3, cin, 3))]
    for t, c, n, s in mobilenetv2.CIFAR_CFG:
      cout = div(c * width)
      for j in range(n):
        layers.append(TorchInvertedResidual(cin, cout, s if j == 0 else 1, t))
        cin = cout
    last = div(1280 * max(1.0, width))
    layers.append(nn.Sequential(*_conv_bn(cin, last, 1)))
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last,
                                                               num_classes))

  def forward(self, x):
    return self.classifier(self.features(x).mean(dim=(2, 3)))


def _randomise(module, seed):
  """Non-trivial weights and BN statistics (so a mis-mapped key shows)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape,
                                               generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape,
                                             generator=g))
      elif isinstance(m, nn.Linear):
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  return module.eval()


CASES = {
    # name: (torch module factory, image size, expected model, convert kw)
    "torchvision_resnet18": (lambda: TorchResNet(
        (2, 2, 2, 2), (64, 128, 256, 512), 1000, "downsample", True, "fc"),
                             64, "resnet18", {"image_size": 64}),
    "torchvision_resnet34": (lambda: TorchResNet(
        (3, 4, 6, 3), (64, 128, 256, 512), 7, "downsample", True, "fc"),
                             64, "resnet34", {"image_size": 64}),
    "cifar_resnet20": (lambda: TorchResNet(
        (3, 3, 3), (16, 32, 64), 10, "option_a", False, "linear"),
                       32, "resnet20", {}),
    "cifar_resnet32": (lambda: TorchResNet(
        (5, 5, 5), (16, 32, 64), 10, "option_a", False, "linear"),
                       32, "resnet32", {}),
    "official_resnet18": (lambda: TorchResNet(
        (2, 2, 2, 2), (64, 128, 256, 512), 10, "shortcut", False, "linear"),
                          32, "resnet18", {"normalization": "cifar10"}),
    "official_mobilenetv2": (lambda: TorchMobileNetV2(100), 32,
                             "mobilenetv2", {"normalization": "cifar100"}),
}


def _save(obj, path, legacy):
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def _jax_logits(teacher_dir, x_nhwc):
  meta = ckpt_lib.read_teacher_meta(teacher_dir)
  target = convert.Target(
      layout=meta["layout"], model=meta["model"],
      num_classes=meta["num_classes"], image_size=meta["image_shape"][0],
      stem=meta["stem"], shortcut=meta["shortcut"],
      width_mult=meta["width_mult"])
  model = target.build()
  like = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *meta["image_shape"])), train=False))
  variables, _ = ckpt_lib.load_teacher(teacher_dir, like, target.meta())
  return np.asarray(model.apply(variables, jnp.asarray(x_nhwc), train=False))


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_logits_equal_pytorch(case, tmp_path):
  factory, size, model_name, kw = CASES[case]
  net = _randomise(factory(), seed=len(case))
  # The zip serialisation for half the cases, the legacy one for the rest;
  # wrapped in {'state_dict'} with DataParallel's prefix for the CIFAR ones.
  legacy = case.startswith(("cifar", "official_mobilenet"))
  state = net.state_dict()
  if case.startswith("cifar"):
    state = {"state_dict": {f"module.{k}": v for k, v in state.items()},
             "best_prec1": 91.0}
  path = str(tmp_path / "model.pth")
  _save(state, path, legacy)
  out = str(tmp_path / "teacher")
  meta = convert.import_checkpoint(path, out, **kw)
  assert meta["model"] == model_name
  x = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(
      np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x)).numpy()
  got = _jax_logits(out, x.transpose(0, 2, 3, 1))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  assert np.abs(expected).max() > 0.1  # not a degenerate comparison


def test_meta_records_model_and_normalisation(tmp_path):
  net = _randomise(CASES["cifar_resnet20"][0](), seed=1)
  path = str(tmp_path / "r20.th")
  _save({"state_dict": net.state_dict(), "best_prec1": 91.5}, path, True)
  convert.import_checkpoint(path, str(tmp_path / "t"))
  with open(tmp_path / "t" / "teacher.json") as f:
    meta = json.load(f)
  assert meta["shortcut"] == "zero_pad" and meta["stem"] == "cifar"
  assert meta["normalization"] == "imagenet"
  assert meta["mean"] == [0.485, 0.456, 0.406]
  assert meta["layout"] == "cifar_resnet" and meta["num_classes"] == 10
  assert meta["source_extras"] == {"best_prec1": 91.5}
  assert len(meta["source_sha256"]) == 64


# ---------------------------------------------------------------------------
# Bad input: one message each, nothing written.


def _r20_file(tmp_path, mutate=None):
  sd = _randomise(CASES["cifar_resnet20"][0](), seed=2).state_dict()
  if mutate:
    mutate(sd)
  path = str(tmp_path / "r20.pth")
  _save(sd, path, False)
  return path


@pytest.mark.parametrize("mutate,kw,pattern", [
    (lambda sd: sd.pop("layer2.1.conv1.weight"), {},
     r"does not match resnet20.*1 keys missing: layer2\.1\.conv1\.weight"),
    (lambda sd: sd.update(extra=torch.zeros(3)), {},
     r"1 keys unexpected: extra"),
    (lambda sd: sd.update({"layer1.0.conv1.weight": torch.zeros(16, 16, 5,
                                                                 5)}), {},
     r"wrong shape: layer1\.0\.conv1\.weight \(16, 16, 5, 5\) \(expected "
     r"\(16, 16, 3, 3\)\)"),
    (None, {"num_classes": 100},
     r"--num_classes=100 but the checkpoint's classifier \(linear\.weight\) "
     r"has 10 outputs"),
    (None, {"model": "resnet56"}, r"does not match resnet56.*missing"),
    (None, {"layout": "official_resnet"},
     r"\(3, 3, 3\) blocks per stage match no official_resnet model"),
])
def test_bad_state_dict_is_refused_and_nothing_written(tmp_path, mutate, kw,
                                                       pattern):
  path = _r20_file(tmp_path, mutate)
  out = tmp_path / "teacher"
  with pytest.raises(convert.ConvertError, match=pattern):
    convert.import_checkpoint(path, str(out), **kw)
  assert sorted(os.listdir(tmp_path)) == ["r20.pth"]


def test_not_a_checkpoint_and_existing_out_are_refused(tmp_path):
  from acs_jax.pretrained import torch_file  # pylint: disable=g-import-not-at-top
  junk = tmp_path / "junk.pth"
  junk.write_bytes(os.urandom(1000))
  with pytest.raises(torch_file.TorchFileError):
    convert.import_checkpoint(str(junk), str(tmp_path / "t"))
  (tmp_path / "t").mkdir()
  with pytest.raises(convert.ConvertError, match="already exists"):
    convert.import_checkpoint(_r20_file(tmp_path), str(tmp_path / "t"))
  assert os.listdir(tmp_path / "t") == []


def test_official_layout_needs_normalisation(tmp_path):
  net = _randomise(CASES["official_resnet18"][0](), seed=3)
  path = str(tmp_path / "r18.pth")
  _save(net.state_dict(), path, False)
  with pytest.raises(convert.ConvertError, match="--normalization"):
    convert.import_checkpoint(path, str(tmp_path / "t"))
  assert not (tmp_path / "t").exists()


@pytest.mark.skipif(not os.path.exists(SHARED_R20),
                    reason="../shared/models/cifar10_resnet is not here")
def test_shared_resnet20_converts(tmp_path):
  meta = convert.import_checkpoint(SHARED_R20, str(tmp_path / "r20"))
  assert (meta["model"], meta["shortcut"], meta["num_classes"]) == (
      "resnet20", "zero_pad", 10)
  assert meta["source_sha256"].startswith("12fca82f")
  assert abs(meta["source_extras"]["best_prec1"] - 91.78) < 0.01
