"""Memory, FLOPs, step time and MFU of a compiled step, known before a long run starts.

`profile_step` compiles any jitted function for example arguments and reads XLA's own
accounting: peak memory per device (`Compiled.memory_analysis`), FLOPs per device
(`Compiled.cost_analysis`); with `steps > 0` it also times the step and computes the model
FLOPs utilisation (MFU) against the device's peak dense throughput (`DEVICE_PEAK_TFLOPS`).
`profile_train_step` does this for the real training step (`train.make_train_step`, sharded
over a device mesh as `train.train_and_evaluate` does) of a model config, batch, context,
dtype and remat setting, and says whether it fits in device memory: "lower the batch or turn
on remat" is learnt from a compile, not from an out-of-memory error hours into a rental.

The executable of a sharded step is the program of one device, so its FLOPs and memory are
per device; MFU compares them with one device's peak.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himari_jax.model import flag_trader as model_lib
from himari_jax.training import mesh as mesh_lib
from himari_jax.training import train as train_lib

# Peak dense TFLOP/s of one device, by a substring of `device.device_kind`. bfloat16 runs on
# tensor cores with float32 accumulation; float32 matmuls run as TF32 on tensor cores (XLA's
# default precision on GPUs since Ampere). GeForce cards accumulate at half rate.
DEVICE_PEAK_TFLOPS = {
    'H200': {'bfloat16': 989.4, 'float32': 494.7},
    'H100': {'bfloat16': 989.4, 'float32': 494.7},
    'A100': {'bfloat16': 312.0, 'float32': 156.0},
    'RTX 4090': {'bfloat16': 165.2, 'float32': 82.6},
    'RTX 3090': {'bfloat16': 71.0, 'float32': 35.6},
}

# Benchmark shapes: (batch, context length T, remat). `seed_long` is the long-context target:
# seed sizes at T = 256 and batch 64, which must fit a 24 GB card.
TRAIN_VARIANTS = {'seed': (64, 1, False), 'seed_long': (64, 256, True)}
# Sizes that stand in for the seed model where only a CPU is at hand (--tiny modes).
TINY_MODEL = {'d_model': 32, 'num_layers': 1, 'num_heads': 4, 'dim_feedforward': 64,
              'max_length': 16, 'lora_rank': 4}
TINY_SHAPES = {'batch': 8, 'max_context': 8}


def variant_shapes(variant: str, tiny: bool = False) -> tuple[model_lib.ModelConfig, int, int,
                                                              bool]:
  """(model config, batch, T, remat) of a `TRAIN_VARIANTS` entry; `tiny` shrinks it for a CPU."""
  if variant not in TRAIN_VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; valid: {", ".join(TRAIN_VARIANTS)}.')
  batch, length, remat = TRAIN_VARIANTS[variant]
  if not tiny:
    return model_lib.ModelConfig(), batch, length, remat
  return (model_lib.ModelConfig(**TINY_MODEL), TINY_SHAPES['batch'],
          min(length, TINY_SHAPES['max_context']), remat)


# Optimiser settings of the seed (configs/default.py); they change neither FLOPs nor memory.
SEED_OPTIMIZER = {'learning_rate': 1e-4, 'warmup_steps': 0, 'weight_decay': 0.01,
                  'grad_clip': 1.0}


def device_peak_tflops(device: jax.Device, dtype: str) -> float | None:
  """Peak dense TFLOP/s of `device` in `dtype`, or None when unknown (CPUs, other GPUs)."""
  if device.platform != 'gpu':
    return None
  for name, peaks in DEVICE_PEAK_TFLOPS.items():
    if name in device.device_kind:
      return peaks.get(str(jnp.dtype(dtype)))
  return None


def device_memory_bytes(device: jax.Device) -> int | None:
  """Bytes XLA may allocate on `device` (its pool limit), or None where not reported (CPU)."""
  stats = device.memory_stats()
  return int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None


@dataclasses.dataclass(frozen=True)
class StepProfile:
  """What one compiled step costs on one device.

  Attributes:
    compile_s: lowering plus compilation time.
    peak_memory_bytes: arguments + non-donated outputs + temporaries, per device.
    temp_bytes: activations and other temporaries (what remat shrinks).
    argument_bytes: inputs (params, optimiser state, batch).
    flops: per step, from XLA's cost analysis (0 where the backend reports none).
    step_s: fastest mean step time over the repeats; None when not timed.
    achieved_tflops: flops / step_s / 1e12; None when not timed.
    peak_tflops: the device's peak for the dtype; None when unknown.
    mfu: achieved / peak; None without both.
    device_memory_bytes: memory the step must fit in; None when unknown.
    fits: peak_memory_bytes <= device_memory_bytes; None when the device's memory is unknown.
    device_kind: e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'.
  """

  compile_s: float
  peak_memory_bytes: int
  temp_bytes: int
  argument_bytes: int
  flops: float
  step_s: float | None
  achieved_tflops: float | None
  peak_tflops: float | None
  mfu: float | None
  device_memory_bytes: int | None
  fits: bool | None
  device_kind: str

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def summary(self) -> str:
    """One line a person can act on, e.g. before renting a GPU."""
    parts = [f'peak memory {_bytes(self.peak_memory_bytes)} '
             f'(activations {_bytes(self.temp_bytes)})',
             f'{self.flops / 1e9:.4g} GFLOP/step', f'compile {self.compile_s:.1f} s']
    if self.step_s is not None:
      parts.append(f'{1e3 * self.step_s:.3g} ms/step, {self.achieved_tflops:.3g} TFLOP/s')
    if self.mfu is not None:
      parts.append(f'MFU {100 * self.mfu:.1f} %')
    if self.fits is not None:
      limit = f'{_bytes(self.device_memory_bytes)} of {self.device_kind}'
      parts.append(f'fits in {limit}' if self.fits else
                   f'DOES NOT FIT in {limit}: lower the batch or turn on remat')
    return '; '.join(parts)


def _bytes(count: int) -> str:
  return f'{count / 2**30:.2f} GiB' if count >= 2**30 else f'{count / 2**20:.1f} MiB'


def _memory(stats: Any) -> tuple[int, int, int]:
  """(total, temp, argument) bytes of a `CompiledMemoryStats`; None gives zeros.

  The total is what the executable allocates at once: arguments, outputs not aliased to a
  donated argument, and the temporary buffer XLA assigns as one block (GPU) - the figure an
  out-of-memory error is about.
  """
  if stats is None:
    return 0, 0, 0
  temp, args = int(stats.temp_size_in_bytes), int(stats.argument_size_in_bytes)
  total = args + int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes) + temp
  return total, temp, args


def profile_step(jitted: Callable, args: Sequence[Any], *, dtype: str = 'float32',
                 steps: int = 0, repeats: int = 2,
                 next_args: Callable[[tuple, Any], tuple] | None = None,
                 make_args: Callable[[], tuple] | None = None,
                 device_memory: int | None = None) -> StepProfile:
  """Compiles `jitted` for `args` and profiles it.

  Args:
    jitted: a `jax.jit`-wrapped step.
    args: its positional arguments; arrays or `jax.ShapeDtypeStruct`s (with shardings) are
      enough to compile.
    dtype: compute dtype, picks the peak for MFU.
    steps: timed calls per repeat after one warm-up; 0 compiles only.
    repeats: timings taken; the fastest counts (least disturbed by other processes).
    next_args: `(args, outputs) -> args` of the next call, e.g. feeding back a train state
      (donated buffers cannot be reused); default: the same args.
    make_args: builds concrete args for timing when `args` are abstract.
    device_memory: bytes the step must fit in; default: the first device's pool limit.

  Returns:
    StepProfile of one device.
  """
  device = jax.devices()[0]
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  peak, temp, arguments = _memory(compiled.memory_analysis())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  step_s = achieved = mfu = None
  peak_tflops = device_peak_tflops(device, dtype)
  if steps > 0:
    call_args = tuple(make_args() if make_args else args)
    outputs = compiled(*call_args)  # warm-up
    jax.block_until_ready(outputs)
    best = float('inf')
    for _ in range(repeats):
      if next_args:
        call_args = next_args(call_args, outputs)
      begin = time.perf_counter()
      for _ in range(steps):
        outputs = compiled(*call_args)
        if next_args:
          call_args = next_args(call_args, outputs)
      jax.block_until_ready(outputs)
      best = min(best, (time.perf_counter() - begin) / steps)
    step_s = best
    achieved = flops / step_s / 1e12
    mfu = achieved / peak_tflops if peak_tflops and flops else None
  memory = device_memory if device_memory is not None else device_memory_bytes(device)
  return StepProfile(compile_s=compile_s, peak_memory_bytes=peak, temp_bytes=temp,
                     argument_bytes=arguments, flops=flops, step_s=step_s,
                     achieved_tflops=achieved, peak_tflops=peak_tflops, mfu=mfu,
                     device_memory_bytes=memory, fits=None if memory is None else peak <= memory,
                     device_kind=device.device_kind)


def profile_train_step(model_config: model_lib.ModelConfig, batch_size: int,
                       context_length: int, dtype: str | None = None, remat: bool | None = None,
                       mesh: jax.sharding.Mesh | None = None, *,
                       train_config: ml_collections.ConfigDict | None = None,
                       trainable_only_grad: bool = True, steps: int = 0, repeats: int = 2,
                       device_memory: int | None = None) -> StepProfile:
  """Profiles the real training step for a model and batch shape.

  The step is `train.make_train_step` jitted with the batch sharded over the mesh's 'data'
  axis and the state replicated, as in `train.train_and_evaluate`. With `steps=0` nothing is
  allocated: the step compiles from shapes alone (a dry run for the 88M model takes seconds).

  Args:
    model_config: sizes and options; `dtype` / `remat` override its fields when given.
    batch_size: global batch, a multiple of the mesh size.
    context_length: T, at most `model_config.max_length`.
    mesh: a 1-D ('data',) mesh; default `mesh.make_mesh()` over every device.
    train_config: optimiser fields (learning_rate, warmup_steps, weight_decay, grad_clip);
      default the seed's.
    trainable_only_grad: as in `train.make_train_step`.
    steps, repeats, device_memory: as in `profile_step`.

  Returns:
    StepProfile of one device.
  """
  overrides = {k: v for k, v in (('dtype', dtype), ('remat', remat)) if v is not None}
  model_config = dataclasses.replace(model_config, **overrides)
  if context_length > model_config.max_length:
    raise ValueError(f'context_length={context_length} exceeds model.max_length='
                     f'{model_config.max_length}.')
  mesh = mesh or mesh_lib.make_mesh()
  if batch_size % mesh.size:
    raise ValueError(f'batch_size={batch_size} is not divisible by the {mesh.size} devices '
                     'of the mesh.')
  train_config = train_config or ml_collections.ConfigDict(SEED_OPTIMIZER)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  total_steps = 1000
  params_shape = model_lib.param_shapes(model_config)
  labels = model_lib.param_labels(params_shape, freeze_base=model_config.freeze_base)
  optimizer = train_lib.make_optimizer(train_config, labels, total_steps)
  step = train_lib.make_train_step(
      model_lib.FlagTrader(model_config), optimizer, labels, jnp.ones(3),
      train_lib.learning_rate_schedule(train_config, total_steps),
      trainable_only_grad=trainable_only_grad)

  def init_state(params):
    return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=optimizer.init(params), rng=jax.random.PRNGKey(0))

  def abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)

  shape = (batch_size, context_length)
  batch_shape = {'inputs': jax.ShapeDtypeStruct((*shape, model_config.state_dim), jnp.float32),
                 'targets': jax.ShapeDtypeStruct(shape, jnp.int32),
                 'mask': jax.ShapeDtypeStruct(shape, jnp.bool_)}
  args = (abstract(jax.eval_shape(init_state, params_shape), replicated),
          abstract(batch_shape, sharded))

  def make_args():
    params = jax.jit(model_lib.init_params, static_argnums=(0, 2), out_shardings=replicated)(
        model_config, jax.random.key(0), context_length)
    state = jax.jit(init_state, out_shardings=replicated)(params)
    rng = np.random.default_rng(0)
    batch = {'inputs': rng.normal(size=(*shape, model_config.state_dim)).astype(np.float32),
             'targets': rng.integers(0, model_config.action_dim, shape).astype(np.int32),
             'mask': np.ones(shape, bool)}
    return state, jax.device_put(batch, sharded)

  jitted = jax.jit(step, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  return profile_step(jitted, args, dtype=model_config.dtype, steps=steps, repeats=repeats,
                      next_args=lambda args, outputs: (outputs[0], args[1]),
                      make_args=make_args, device_memory=device_memory)
