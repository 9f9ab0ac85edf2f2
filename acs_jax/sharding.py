"""One data-parallel mesh over every device of every host, and host<->device moves.

The whole project uses jit + NamedSharding (no pmap): parameters, optimizer
state and BatchNorm statistics are replicated (`P()`), batches are split along
the single mesh axis "data" (`P("data")`). Under jit, BatchNorm's batch
statistics are computed over the *global* batch (XLA inserts the all-reduce),
i.e. synchronised BatchNorm across devices and hosts.
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
  ACS_JAX_DISTRIBUTED=1 (set by the launch scripts). On TPU pods, SLURM and
  other clusters JAX finds the coordinator itself; elsewhere the usual
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables apply.
  Returns whether it initialised.
  """
  if flag is None:
    flag = os.environ.get("ACS_JAX_DISTRIBUTED", "0") not in ("", "0", "false")
  if not flag:
    return False
  jax.distributed.initialize()
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


def local_batch_size(global_batch: int, mesh: Mesh | None = None) -> int:
  """The rows of each global batch this process loads.

  Raises ValueError when the global batch cannot be split evenly over the
  devices (every device must hold the same number of rows).
  """
  n_dev = jax.device_count() if mesh is None else mesh.devices.size
  if global_batch % n_dev:
    raise ValueError(
        f"batch size {global_batch} must be a multiple of the number of "
        f"devices ({n_dev}); valid values: {n_dev}, {2 * n_dev}, "
        f"{4 * n_dev}, ...")
  return global_batch // jax.process_count()


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
  """Places a host pytree (identical on all processes) replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
  """Fetches (possibly multi-host sharded) arrays as full numpy arrays.

  With several processes every host receives the whole array (an all-gather);
  with one process this is a plain device-to-host copy.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
      tree)
