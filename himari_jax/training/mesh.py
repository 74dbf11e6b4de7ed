"""The data-parallel device mesh of training and validation, and host arrays on it.

One 1-D mesh ('data',) over every device of every process: batches are sharded over 'data',
params and optimiser state are replicated. The same code runs on one CPU, several GPUs, or
several hosts after `jax.distributed.initialize()`: each process passes only its slice of a
global batch (`jax.make_array_from_process_local_data`). Sweeps over many settings on the
local devices use their own mesh (sharding.py).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh ('data',) over every device of every process.

  Auto axes: shardings of intermediates are left to the compiler (jax >= 0.7 would make
  `jax.make_mesh` axes Explicit, which types every intermediate's sharding).
  """
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree: Any, sharding: NamedSharding) -> Any:
  """Host arrays -> global arrays replicated over the mesh (each process passes the same)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def shard_batch(batch: dict[str, np.ndarray], sharding: NamedSharding,
                global_batch: int) -> dict[str, jax.Array]:
  """This process's slice of a batch -> global arrays sharded over the 'data' axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
          for k, v in batch.items()}
