"""One data-parallel mesh over every device of every host, and host<->device moves.

The whole project uses jit + NamedSharding (no pmap): parameters, optimizer
state and BatchNorm statistics are replicated (`P()`), batches are split along
the single mesh axis "data" (`P("data")`). Under jit, BatchNorm's batch
statistics are computed over the *global* batch (XLA inserts the all-reduce),
i.e. synchronised BatchNorm across devices and hosts.

Several processes (TPU pod workers, one process per GPU under SLURM, or
local CPU processes joined by jax.distributed) run the same program. Each
loads only its rows of every global batch (`host_to_global`); values that all
processes compute identically on the host (initial weights from the seed, a
loaded checkpoint, the selected coreset) become global arrays through
`replicate`; `to_host` brings global arrays back; `broadcast_from_primary`
makes a host-side decision identical everywhere. Every process must make the
same jitted calls in the same order: a process that skips one (or runs a
different number of steps) leaves the others blocked in a collective.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
  """Calls `jax.distributed.initialize()` when the run spans several processes.

  Opt in with `flag=True` (the --distributed flag) or the environment variable
  ACS_JAX_DISTRIBUTED=1 (set by the launch scripts). On Cloud TPU VMs, SLURM
  (one process per GPU) and Open MPI, JAX finds the coordinator, the process
  count and this process's id itself. Elsewhere set
    JAX_COORDINATOR_ADDRESS=host:port  (process 0's host; read by JAX)
    JAX_NUM_PROCESSES=P, JAX_PROCESS_ID=i  (read here)
    JAX_LOCAL_DEVICE_IDS=0,1,...  (optional, read by JAX: e.g. one process
      per node under SLURM, where JAX would otherwise take only GPU
      SLURM_LOCALID).
  Must run before anything touches a JAX backend. Returns whether it
  initialised.
  """
  if flag is None:
    flag = os.environ.get("ACS_JAX_DISTRIBUTED", "0").lower() not in (
        "", "0", "false", "no")
  if not flag:
    return False
  kwargs = {}
  for env_name, arg in (("JAX_NUM_PROCESSES", "num_processes"),
                        ("JAX_PROCESS_ID", "process_id")):
    value = os.environ.get(env_name, "")
    if value:
      try:
        kwargs[arg] = int(value)
      except ValueError:
        raise ValueError(f"{env_name}={value!r} must be an integer") from None
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices, axis name "data"."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(batch: int, num_devices: int, name: str = "batch size"
                ) -> None:
  """ValueError unless `batch` splits evenly over `num_devices` devices."""
  if batch % num_devices:
    raise ValueError(
        f"{name}={batch} must be a multiple of the number of devices "
        f"({num_devices}); valid values: {num_devices}, {2 * num_devices}, "
        f"{4 * num_devices}, ...")


def host_to_global(tree: Any, mesh: Mesh) -> Any:
  """Lifts host-local batch arrays (this process's rows) to global arrays.

  Each process passes only its slice of the global batch; the result is one
  jax.Array per leaf, sharded along "data" over every device of every host.
  """
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       _device_dtype(x)),
      tree)


def _device_dtype(x) -> np.ndarray:
  """int64/float64 host arrays become 32-bit unless jax_enable_x64 is on."""
  x = np.asarray(x)
  if not jax.config.jax_enable_x64 and x.dtype in (np.int64, np.float64):
    x = x.astype(np.int32 if x.dtype == np.int64 else np.float32)
  return x


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree, identical on every process, replicated on the mesh.

  Leaves may be numpy arrays, Python scalars, or jax Arrays: process-local
  ones (e.g. the output of an un-sharded `jax.jit`, or a restored
  checkpoint) or global ones. With several processes a local leaf is rebuilt
  from this process's copy (`jax.make_array_from_process_local_data`), which
  needs no cross-host transfer (which `jax.device_put` of a committed local
  array would need, and CPU/GPU backends do not offer) and no per-leaf
  equality collective; the caller guarantees that every process holds the
  same values (they come from the same seed or the same checkpoint).
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already global: a reshard
    return jax.make_array_from_process_local_data(sharding, _device_dtype(x))

  return jax.tree.map(put, tree)


def is_primary() -> bool:
  """True on the process that writes shared files (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier over all processes (no-op with one process).

  Use after process 0 writes a file the others will read.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def broadcast_from_primary(value: Any) -> Any:
  """Process 0's value of a small host pytree, on every process.

  For host-side decisions that every process must take identically (e.g.
  "is there a checkpoint to load?" on storage that may differ between hosts):
  one host deciding otherwise would make the hosts run different
  collectives and hang. Returns numpy arrays (scalars as 0-d arrays).
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, value)
  return multihost_utils.broadcast_one_to_all(value)


def to_host(tree: Any) -> Any:
  """Fetches arrays as full numpy arrays with their global values.

  * A global array spanning several processes (not fully addressable): a
    replicated one is read from a local copy; a sharded one is all-gathered
    (a collective), so every host receives the whole array. Call it on every
    process, in the same order.
  * A fully addressable array (single-process runs, or a process-local value
    such as the output of an un-sharded jit) or a numpy array: a plain copy.
    Such values are NOT exchanged between processes (unlike
    `multihost_utils.process_allgather`, which would concatenate the
    processes' copies).
  """
  return jax.tree.map(_fetch, tree)


def _fetch(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
