"""Tests of the torch-free checkpoint reader: torch writes, the reader reads."""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from acs_jax.pretrained import torch_file  # noqa: E402
from acs_jax.pretrained.torch_file import TorchFileError  # noqa: E402

_REAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "..", "shared", "models", "cifar10_resnet",
                     "resnet20-12fca82f.th")
_FORMATS = pytest.mark.parametrize("legacy", [False, True],
                                   ids=["zip", "legacy"])
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16,
           torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
           torch.bool]


class _Net(torch.nn.Module):
  """Conv, BN (with num_batches_tracked) and linear layers."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    self.bn = torch.nn.BatchNorm2d(4)
    self.fc = torch.nn.Linear(4, 2)

  def forward(self, x):
    return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _net_state() -> dict:
  torch.manual_seed(0)
  net = _Net()
  net(torch.randn(2, 3, 6, 6))  # training mode: BN statistics move
  return net.state_dict()


def _save(obj, path, legacy: bool) -> str:
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  return str(path)


def _numpy(tensor) -> np.ndarray:
  if tensor.dtype == torch.bfloat16:
    tensor = tensor.float()
  return tensor.numpy()


def _assert_same(got: dict, want: dict) -> None:
  """Same keys, dtypes, shapes and values (exactly); C-contiguous arrays."""
  assert sorted(got) == sorted(want)
  for key, tensor in want.items():
    expected = _numpy(tensor)
    assert got[key].dtype == expected.dtype, key
    assert got[key].shape == expected.shape, key
    assert got[key].flags.c_contiguous, key
    np.testing.assert_array_equal(got[key], expected, err_msg=key)


@_FORMATS
@pytest.mark.parametrize("layout", ["bare", "wrapped", "prefixed"])
def test_module_state_dict(tmp_path, legacy, layout):
  sd = _net_state()
  assert "bn.num_batches_tracked" in sd
  obj = {"bare": sd,
         "wrapped": {"state_dict": sd, "best_prec1": 91.78, "epoch": 3},
         "prefixed": collections.OrderedDict(
             ("module." + k, v) for k, v in sd.items())}[layout]
  path = _save(obj, tmp_path / "net.pth", legacy)
  got, extras = torch_file.read_checkpoint(path)
  loaded = torch.load(path, weights_only=True)
  if layout == "wrapped":
    loaded = loaded["state_dict"]
  _assert_same(got, {k.removeprefix("module."): v for k, v in loaded.items()})
  _assert_same(got, sd)
  want = {"best_prec1": 91.78, "epoch": 3} if layout == "wrapped" else {}
  assert extras == want


@_FORMATS
def test_every_dtype(tmp_path, legacy):
  gen = torch.Generator().manual_seed(0)
  sd = {}
  for dtype in _DTYPES:
    if dtype.is_floating_point:
      sd[str(dtype)] = (torch.randn(3, 5, generator=gen) * 30).to(dtype)
    else:
      high = 2 if dtype == torch.bool else 100
      sd[str(dtype)] = torch.randint(0, high, (3, 5), generator=gen).to(dtype)
  path = _save(sd, tmp_path / "dtypes.pt", legacy)
  got, _ = torch_file.read_checkpoint(path)
  _assert_same(got, torch.load(path, weights_only=True))
  assert got["torch.bfloat16"].dtype == np.float32


@_FORMATS
def test_layouts(tmp_path, legacy):
  base = torch.arange(24, dtype=torch.float32)
  sd = {"transposed": torch.arange(12.0).reshape(3, 4).t(),
        "view_a": base[2:8].view(2, 3),
        "view_b": base[10:22].view(3, 4)[:, 1::2],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3, dtype=torch.int64)}
  assert not sd["transposed"].is_contiguous()
  path = _save(sd, tmp_path / "views.pt", legacy)
  got, _ = torch_file.read_checkpoint(path)
  _assert_same(got, torch.load(path, weights_only=True))
  _assert_same(got, sd)


@_FORMATS
def test_extras_keep_only_scalars(tmp_path, legacy):
  obj = {"model": {"w": torch.ones(2)}, "acc": torch.tensor(0.5),
         "steps": torch.tensor(7), "name": "r20", "flag": True,
         "np_acc": np.float64(91.78), "lr": {"base": 0.1}, "none": None,
         "optimizer": {"state": {0: {"m": torch.zeros(2)}}}, "hist": [1, 2]}
  path = _save(obj, tmp_path / "extras.pt", legacy)
  got, extras = torch_file.read_checkpoint(path)
  _assert_same(got, {"w": torch.ones(2)})
  assert extras == {"acc": 0.5, "steps": 7, "name": "r20", "flag": True,
                    "np_acc": 91.78}
  assert type(extras["steps"]) is int and type(extras["np_acc"]) is float


def test_big_endian_zip(tmp_path):
  sd = {"f": torch.randn(2, 3), "d": torch.randn(4).double(),
        "h": torch.arange(5, dtype=torch.int16),
        "b": torch.randn(3).bfloat16()}
  path = _save(sd, tmp_path / "little.pt", legacy=False)
  sizes = [t.element_size() for t in sd.values()]  # storage keys 0, 1, ...
  swapped = tmp_path / "big.pt"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(swapped, "w") as dst:
    for name in src.namelist():
      data = src.read(name)
      folder, _, leaf = name.rpartition("/")
      if folder.endswith("/data") and leaf.isdigit():
        raw = np.frombuffer(data, f"u{sizes[int(leaf)]}")
        data = raw.byteswap().tobytes()
      elif leaf == "byteorder":
        data = b"big"
      dst.writestr(name, data)
  got, _ = torch_file.read_checkpoint(swapped)
  _assert_same(got, sd)
  _assert_same(got, torch.load(swapped, weights_only=True))


def _write(path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


def _truncated(tmp_path, legacy: bool, fraction: float) -> str:
  good = _save(_net_state(), tmp_path / "good.pt", legacy)
  data = open(good, "rb").read()
  return _write(tmp_path / "cut.pt", data[:int(len(data) * fraction)])


def _bad_file(tmp_path, case: str) -> str:
  """A file (or path) that read_checkpoint must refuse, for `case`."""
  if case == "missing":
    return str(tmp_path / "nowhere.pt")
  if case == "directory":
    return str(tmp_path)
  if case == "empty":
    return _write(tmp_path / "empty.pt", b"")
  if case == "random":
    return _write(tmp_path / "random.pt",
                  np.random.default_rng(0).bytes(4096))
  if case == "truncated_zip":
    return _truncated(tmp_path, legacy=False, fraction=0.5)
  if case == "truncated_legacy_data":
    return _truncated(tmp_path, legacy=True, fraction=0.8)
  if case == "truncated_legacy_pickle":
    return _truncated(tmp_path, legacy=True, fraction=0.05)
  if case == "npz":
    np.savez(tmp_path / "arrays.npz", a=np.ones(3))
    return str(tmp_path / "arrays.npz")
  if case == "list_pickle":
    return _write(tmp_path / "list.pkl", pickle.dumps([1, 2, 3]))
  if case == "no_tensors":
    return _save({"epoch": 3, "best_prec1": 91.0}, tmp_path / "n.pt", False)
  legacy = case == "module_legacy"
  return _save(_Net(), tmp_path / "module.pt", legacy)


_ERRORS = {"missing": "does not exist", "directory": "is a directory",
           "empty": "is empty", "random": "not a PyTorch checkpoint",
           "truncated_zip": "truncated", "truncated_legacy_data": "truncated",
           "truncated_legacy_pickle": "truncated", "npz": "NumPy .npz",
           "list_pickle": "plain pickle of a list",
           "no_tensors": "no tensors", "module_zip": "_Net, which",
           "module_legacy": "_Net, which"}


@pytest.mark.parametrize("case", sorted(_ERRORS))
def test_refuses_bad_files(tmp_path, case):
  path = _bad_file(tmp_path, case)
  with pytest.raises(TorchFileError, match=_ERRORS[case]) as info:
    torch_file.read_checkpoint(path)
  message = str(info.value)
  assert message.startswith(path) and message.endswith(".")
  assert "\n" not in message
  if case.startswith("module"):
    assert "model.state_dict()" in message


class _Exploit:
  """Unpickling this runs `touch target`."""

  def __init__(self, target):
    self.target = str(target)

  def __reduce__(self):
    return os.system, (f"touch {self.target}",)


def _malicious(tmp_path, kind: str, payload: bytes) -> str:
  if kind == "plain":
    return _write(tmp_path / "evil.pkl", payload)
  if kind == "zip":
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", payload)
      zf.writestr("archive/byteorder", "little")
    return str(path)
  header = io.BytesIO()  # legacy: a valid header, then the exploit
  for value in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
    pickle.dump(value, header, protocol=2)
  return _write(tmp_path / "evil.th", header.getvalue() + payload)


@pytest.mark.parametrize("kind", ["plain", "zip", "legacy"])
def test_refuses_malicious_pickle_without_running_it(tmp_path, kind):
  target = tmp_path / "pwned"
  payload = pickle.dumps({"w": _Exploit(target)}, protocol=2)
  path = _malicious(tmp_path, kind, payload)
  with pytest.raises(TorchFileError, match=r"(os|posix)\.system, which"):
    torch_file.read_checkpoint(path)
  assert not target.exists()
  pickle.loads(payload)  # the payload is live: plain pickle runs it
  assert target.exists()


def test_real_resnet20_checkpoint():
  if not os.path.exists(_REAL):
    pytest.skip(f"{os.path.normpath(_REAL)} is absent (the shared pretrained "
                "CIFAR-10 ResNet-20 is not laid out beside the repository)")
  got, extras = torch_file.read_checkpoint(_REAL)
  assert len(got) == 97
  assert not any(k.startswith("module.") for k in got)
  assert got["conv1.weight"].shape == (16, 3, 3, 3)
  assert got["linear.weight"].shape == (10, 64)
  assert extras["best_prec1"] == pytest.approx(91.78)
  want = torch.load(_REAL, weights_only=False, map_location="cpu")
  _assert_same(got, {k.removeprefix("module."): v
                     for k, v in want["state_dict"].items()})
