"""Training-step throughput: trainable-only vs full-tree gradients, seed and small models.

  python benchmarks/bench_train.py                       # seed (T=1, batch 64) and small
  python benchmarks/bench_train.py --variants=small --steps=20 --dtype=bfloat16

For each variant and gradient mode it compiles the real train step (`train.make_train_step`,
jitted over the device mesh exactly as `train_and_evaluate` does), reports the compile time
separately, then times `--steps` steps on random batches (best of `--repeats`): steps/s,
samples/s, and the FLOPs per step from XLA's cost analysis. On a GPU it also reports model
FLOPs utilisation (MFU) against the device's peak dense throughput (`--peak_tflops`, or a
table of known GPUs).
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from himari_jax import config as config_lib  # noqa: E402 - after the path fix (source checkout)
from himari_jax import model, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('variants', ['seed', 'small'], 'configs/flag_trader.py variants to time.')
flags.DEFINE_integer('steps', 10, 'Timed steps per measurement (after compilation).')
flags.DEFINE_integer('repeats', 3, 'Measurements per setting; the fastest is reported.')
flags.DEFINE_integer('batch_size', 0, 'Global batch; 0 = the variant\'s own.')
flags.DEFINE_string('dtype', '', 'Compute dtype override (float32, bfloat16); default: config.')
flags.DEFINE_float('peak_tflops', 0.0, 'Peak dense TFLOP/s of one device for MFU; 0 = table.')

# Peak dense TFLOP/s per device (bf16 tensor cores; float32 runs as TF32 on tensor cores).
PEAK_TFLOPS = {'H100': {'bfloat16': 989.0, 'float32': 494.5},
               'H200': {'bfloat16': 989.0, 'float32': 494.5},
               'A100': {'bfloat16': 312.0, 'float32': 156.0},
               'L40S': {'bfloat16': 362.0, 'float32': 183.0},
               'RTX 4090': {'bfloat16': 165.2, 'float32': 82.6}}


def load_config(variant: str):
  return config_lib.flag_trader_config(variant)


def peak_tflops(dtype: str) -> float | None:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_TFLOPS.items():
    if name in kind:
      return peaks.get(dtype)
  return None


def bench(config, trainable_only: bool) -> dict:
  """Compiles and times one train step of `config`; returns the measurements."""
  t = config.train
  model_config = model.ModelConfig.from_config(config.model)
  mesh = train.make_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  params = jax.jit(model.init_params, static_argnums=(0, 2), out_shardings=replicated)(
      model_config, jax.random.key(0), t.context_length)
  labels = model.param_labels(params, freeze_base=model_config.freeze_base)
  total = 1000
  optimizer = train.make_optimizer(t, labels, total)
  step = train.make_train_step(model.FlagTrader(model_config), optimizer, labels, jnp.ones(3),
                               train.learning_rate_schedule(t, total),
                               trainable_only_grad=trainable_only)
  state = jax.jit(lambda p: train.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                             opt_state=optimizer.init(p),
                                             rng=jax.random.PRNGKey(0)),
                  out_shardings=replicated)(params)
  rng = np.random.default_rng(0)
  shape = (t.batch_size, t.context_length)
  batch = {'inputs': rng.normal(size=(*shape, 60)).astype(np.float32),
           'targets': rng.integers(0, 3, shape).astype(np.int32),
           'mask': np.ones(shape, bool)}
  batch = jax.device_put(batch, sharded)
  jitted = jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated,
                                                                            replicated),
                   donate_argnums=0)
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  elapsed = []
  for _ in range(FLAGS.repeats):  # the fastest repeat: least disturbed by other processes
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    elapsed.append(time.perf_counter() - start)
  steps_per_s = FLAGS.steps / min(elapsed)
  return {'compile_s': compile_s, 'steps_per_s': steps_per_s,
          'samples_per_s': steps_per_s * t.batch_size, 'gflop_per_step': flops / 1e9,
          'achieved_tflops': flops * steps_per_s / 1e12,
          'params': model.count_params(params, labels)}


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f'JAX {jax.__version__}, {jax.device_count()} x {device.device_kind} '
        f'({device.platform}), {os.cpu_count()} CPU cores visible')
  header = (f'{"variant":8} {"grad":10} {"batch":>5} {"T":>3} {"compile s":>9} {"steps/s":>8} '
            f'{"samples/s":>10} {"GFLOP/step":>10} {"TFLOP/s":>8} {"MFU":>6}')
  print(header)
  for variant in FLAGS.variants:
    config = load_config(variant)
    if FLAGS.batch_size:
      config.train.batch_size = FLAGS.batch_size
    if FLAGS.dtype:
      config.model.dtype = FLAGS.dtype
    peak = peak_tflops(config.model.dtype) if device.platform == 'gpu' else None
    for trainable_only in (True, False):
      r = bench(config, trainable_only)
      mfu = (f'{100 * r["achieved_tflops"] / (peak * jax.device_count()):5.1f}%' if peak
             else '   n/a')
      print(f'{variant:8} {"trainable" if trainable_only else "full-tree":10} '
            f'{config.train.batch_size:5d} {config.train.context_length:3d} '
            f'{r["compile_s"]:9.1f} {r["steps_per_s"]:8.2f} {r["samples_per_s"]:10.1f} '
            f'{r["gflop_per_step"]:10.2f} {r["achieved_tflops"]:8.3f} {mfu}', flush=True)
    print(f'  {variant} params: {r["params"]}')


if __name__ == '__main__':
  app.run(main)
