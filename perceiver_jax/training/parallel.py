"""Data parallelism over every device of every process: one 1-D mesh, one way to lay batches on it.

Per-device functions are written pmap-style (they see their shard and use `lax.pmean` over the axis
`AXIS`); `data_parallel` compiles them with `jax.jit` over the mesh through `jax.shard_map`, with the
train state replicated and the batch split along its leading axis.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `AXIS` over all devices (or `devices`)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def shard_batch(mesh: Mesh, local_batch):
  """This process's numpy batch [b, ...] -> global arrays [b * processes, ...] split over the mesh."""
  sharding = batch_sharded(mesh)
  num_local = len(mesh.local_devices)

  def put(x):
    x = np.asarray(x)
    if x.shape[0] % num_local:
      raise ValueError(
        f"The per-process batch of {x.shape[0]} does not split over {num_local} local devices; "
        "make the global batch size a multiple of the device count."
      )
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, local_batch)


def prefetch(batches: Iterable, mesh: Mesh, size: int = 2) -> Iterator:
  """Lays batches on the devices `size` ahead of use, so host input overlaps device compute."""
  queue = collections.deque()
  iterator = iter(batches)
  for batch in itertools.islice(iterator, size):
    queue.append(shard_batch(mesh, batch))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(iterator, 1):
      queue.append(shard_batch(mesh, batch))


def gather(x):
  """Per device: this device's [b, ...] -> the global batch [b * devices, ...], the same on every device.

  Written as a psum of each shard placed at its offset, so that the result is known to be replicated (an
  `all_gather` is not, under shard_map's replication check); bool arrays travel as int32.
  """
  count, index = lax.psum(1, AXIS), lax.axis_index(AXIS)
  kind = x.dtype
  x = x.astype(jnp.int32) if kind == jnp.bool_ else x
  full = jnp.zeros((count * x.shape[0], *x.shape[1:]), x.dtype)
  full = lax.psum(lax.dynamic_update_slice_in_dim(full, x, index * x.shape[0], 0), AXIS)
  return full.astype(kind)


def data_parallel(
  per_device_fn: Callable,
  mesh: Mesh,
  in_specs: tuple,
  out_specs,
  donate_argnums: tuple[int, ...] = (),
) -> Callable:
  """jit(shard_map(per_device_fn)): the pmap-style function run on every device of the mesh."""
  mapped = jax.shard_map(per_device_fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  return jax.jit(mapped, donate_argnums=donate_argnums)


REPLICATED = P()
SHARDED = P(AXIS)
