"""Sweeps on every local device: a per-setting function mapped over settings sharded by device.

`map_settings(fn, settings, *shared)` evaluates `fn(setting, *shared)` for every setting of a
batched pytree (every leaf has the same leading axis C). The settings are padded to a
multiple of the device count (repeating the last one), laid out with
`NamedSharding(mesh, P('settings'))` over a 1-D mesh of the local devices, and each device
runs its own slice (`jax.shard_map`): `batch_size` settings at a time through `jax.lax.map`,
so memory is bounded by the batch rather than by C / devices. The shared arguments (prices,
signals) are replicated. Each setting is computed by the same function on the same inputs
whatever the number of devices; XLA compiles one program per device count, so results can
differ by rounding (fused arithmetic), not more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'settings'


def num_settings(settings: Any) -> int:
  """C, the leading axis shared by every leaf of `settings`."""
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(settings)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f'every settings leaf needs the same leading axis; got sizes {sizes}.')
  return sizes.pop()


# Bounded: a caller passing a fresh lambda per call would otherwise keep every program alive.
@functools.lru_cache(maxsize=32)
def _sharded_map(fn: Callable, devices: tuple[jax.Device, ...], batch_size: int | None,
                 num_shared: int) -> tuple[Callable, Mesh]:
  """The jitted sweep for one (fn, devices, batch_size): compiled once, reused per call."""
  mesh = Mesh(np.asarray(devices), (AXIS,))

  def local(settings, *shared):
    # One device's slice: (C / devices, ...) leaves.
    one = lambda setting: fn(setting, *shared)  # noqa: E731 - closes over the shared inputs
    if batch_size is None:
      return jax.vmap(one)(settings)
    if batch_size == 1:
      # One at a time: `fn` itself, not `fn` under a vmap of size 1.
      return jax.lax.map(one, settings)
    return jax.lax.map(one, settings, batch_size=batch_size)

  # check_vma=False: per-setting code (scans with constant initial carries) need not mark
  # which values vary across devices; every output is per setting anyway.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), *[P()] * num_shared),
                         out_specs=P(AXIS), check_vma=False)
  return jax.jit(mapped), mesh


def map_settings(fn: Callable[..., Any], settings: Any, *shared: Any,
                 batch_size: int | None = None,
                 devices: Sequence[jax.Device] | None = None) -> Any:
  """`fn` of every setting, the settings spread over the local devices.

  Args:
    fn: `fn(setting, *shared) -> pytree of arrays` for one setting (leaves without the C
      axis); traced once. Pass the same function object between calls to reuse the compiled
      program (a module-level function or a `functools.partial` kept by the caller).
    settings: pytree whose leaves have the same leading axis C (e.g. `backtest.make_grid`).
    *shared: arrays every setting reads (prices, actions), replicated on every device.
    batch_size: settings each device evaluates together (`jax.lax.map` batches); 1 runs
      `fn` on one setting at a time (unbatched); None evaluates a device's whole slice in
      one `vmap`.
    devices: default `jax.local_devices()`.

  Returns:
    Pytree of `fn`'s outputs with a leading axis C, as NumPy arrays.
  """
  devices = tuple(devices or jax.local_devices())
  count = num_settings(settings)
  padded_count = -(-count // len(devices)) * len(devices)
  # Repeat the last setting as padding: a valid setting, so no NaN paths are compiled in.
  index = np.minimum(np.arange(padded_count), count - 1)
  padded = jax.tree.map(lambda leaf: np.asarray(leaf)[index], settings)
  step, mesh = _sharded_map(fn, devices, batch_size, len(shared))
  padded = jax.device_put(padded, NamedSharding(mesh, P(AXIS)))
  shared = jax.device_put(shared, NamedSharding(mesh, P()))
  out = step(padded, *shared)
  return jax.tree.map(lambda leaf: np.asarray(leaf)[:count], out)
