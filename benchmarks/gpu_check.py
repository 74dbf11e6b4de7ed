"""One GPU check, one JSON report: `benchmarks/gpu_check.sh OUT_DIR [--tiny]`.

Sections (each timed; the report is rewritten after each, so a cut-off run keeps its figures):
  device      JAX version, devices, driver (nvidia-smi when present).
  parity      logits on the default device vs the CPU, float32 at highest matmul precision.
  train_step  seed sizes at T = 1 and T = 256 (batch 64, remat at T = 256), float32 and
              bfloat16, explicit-softmax and fused attention (XLA's kernel; on a GPU in
              bfloat16 also cuDNN flash attention): peak memory, FLOPs, step time, MFU
              (`profiling.profile_train_step`).
  latency     one decision: the seed model on one window of T = 1, jitted, median of calls.
  sweep       100,000 backtest settings over the 43,816 bars of BTC 2020-2024, sharded over
              the local devices (`sharding.map_settings`): setting-bars/s.

`--tiny` runs the same sections at CPU sizes (a 2-layer model, 64 settings over 2,000 bars):
the test suite runs it so the script cannot rot. A full run targets at most 8 minutes on one
H100-class GPU.
"""

import dataclasses
import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from himari_jax.backtest import engine as backtest
from himari_jax.backtest import sharding
from himari_jax.data import ohlcv as data
from himari_jax.model import flag_trader as model
from himari_jax.stats import metrics
from himari_jax.training import profiling

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Folder for gpu_check.json.', required=True)
flags.DEFINE_bool('tiny', False, 'CPU sizes: tiny model, 64 settings over 2,000 bars.')
flags.DEFINE_integer('settings', 100_000, 'Backtest settings in the sweep (full mode).')
flags.DEFINE_integer('sweep_batch', 4096, 'Settings each device simulates together.')

SWEEP_DATASET = 'btc_usdt_1h_2020_2024'


def device_section() -> dict:
  devices = jax.devices()
  info = {'jax': jax.__version__, 'python': platform.python_version(),
          'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'device_count': len(devices),
          'memory_bytes': profiling.device_memory_bytes(devices[0])}
  try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                          '--format=csv,noheader'], capture_output=True, text=True, timeout=30,
                         check=True)
    info['nvidia_smi'] = smi.stdout.strip().splitlines()
  except (OSError, subprocess.SubprocessError):
    info['nvidia_smi'] = None
  return info


def _nonzero_adapters(params: dict, seed: int = 0) -> dict:
  """lora_B is zero at init; random values make the adapters part of the compared function."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, p: (0.02 * rng.standard_normal(p.shape)).astype(np.float32)
      if 'lora_B' in jax.tree_util.keystr(path) else np.asarray(p), params)


def parity_section(config: model.ModelConfig, length: int) -> dict:
  cpu = jax.devices('cpu')[0]
  params = _nonzero_adapters(jax.jit(model.init_params, static_argnums=(0, 2), device=cpu)(
      config, jax.random.key(0), length))
  states = np.random.default_rng(1).standard_normal((4, length, config.state_dim), np.float32)
  apply = jax.jit(lambda p, s: model.FlagTrader(config).apply({'params': p}, s))
  with jax.default_matmul_precision('highest'):
    here = np.asarray(apply(jax.device_put(params, jax.devices()[0]), states))
    on_cpu = np.asarray(apply(jax.device_put(params, cpu), jax.device_put(states, cpu)))
  diff = float(np.abs(here - on_cpu).max())
  return {'context_length': length, 'max_abs_diff': diff, 'ok': diff < 1e-4}


def train_step_section(tiny: bool) -> list[dict]:
  on_gpu = jax.devices()[0].platform == 'gpu'
  rows = []
  for variant in profiling.TRAIN_VARIANTS:
    config, batch, length, remat = profiling.variant_shapes(variant, tiny)
    for dtype in ('float32', 'bfloat16'):
      # (name, attention_dropout, implementation). At T = 1 attention copies the values, so
      # the path does not matter; cuDNN flash attention takes only half-precision inputs.
      paths = [('softmax', 0.1, None)]
      if length > 1:
        paths.append(('fused', 0.0, None))
        if on_gpu and dtype == 'bfloat16':
          paths.append(('cudnn', 0.0, 'cudnn'))
      for attention, drop, implementation in paths:
        row = {'variant': variant, 'dtype': dtype, 'batch': batch, 'context_length': length,
               'remat': remat, 'attention': attention}
        try:
          profile = profiling.profile_train_step(
              dataclasses.replace(config, attention_dropout=drop,
                                  attention_implementation=implementation),
              batch, length, dtype=dtype, remat=remat, steps=2 if tiny else 10,
              repeats=1 if tiny else 2)
          row.update(profile.as_dict(), summary=profile.summary())
        except Exception as e:  # noqa: BLE001 - a kernel this GPU lacks is a finding
          if attention != 'cudnn':
            raise
          row['error'] = f'{type(e).__name__}: {str(e)[:500]}'
        rows.append(row)
        print(variant, dtype, attention, row.get('summary', row.get('error')), flush=True)
  return rows


def latency_section(config: model.ModelConfig, calls: int) -> dict:
  params = jax.jit(model.init_params, static_argnums=(0,))(config, jax.random.key(0))
  decide = jax.jit(lambda p, s: jnp.argmax(model.FlagTrader(config).apply({'params': p}, s), -1))
  window = jnp.zeros((1, 1, config.state_dim), jnp.float32)
  decide(params, window).block_until_ready()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    decide(params, window).block_until_ready()
    times.append(time.perf_counter() - start)
  return {'calls': calls, 'median_ms': 1e3 * float(np.median(times)),
          'p90_ms': 1e3 * float(np.percentile(times, 90))}


def one_setting(setting: backtest.BacktestParams, prices: jax.Array, actions: jax.Array,
                confidence: jax.Array) -> dict:
  """Every metric of one backtest setting; prices (N, 2) [open, close]."""
  result = backtest.run_backtest(prices, actions, confidence, setting)
  return metrics.compute_metrics(result, metrics.market_returns(prices[:, 1]),
                                 setting.initial_capital)


def sweep_section(tiny: bool, num_settings: int, batch_size: int) -> dict:
  frame = data.load_dataset(SWEEP_DATASET)
  if tiny:
    frame, num_settings, batch_size = frame.iloc[:2000], 64, 16
  prices = frame[['open', 'close']].to_numpy(np.float32)
  rng = np.random.default_rng(0)
  actions = rng.integers(0, 3, len(prices)).astype(np.int32)
  confidence = rng.uniform(0.34, 1.0, len(prices)).astype(np.float32)
  # A 2 x 2 x 25 base grid tiled with varying thresholds up to `num_settings`.
  base = backtest.make_grid(sizing=['confidence', 'full'], fill=['close', 'next_open'],
                            max_position_pct=list(np.linspace(0.04, 1.0, 25)))
  count = base.sizing.shape[0]
  index = np.arange(num_settings) % count
  settings = jax.tree.map(lambda leaf: np.asarray(leaf)[index], base)
  settings = dataclasses.replace(settings, confidence_threshold=np.linspace(
      0.0, 0.9, num_settings).astype(np.asarray(base.confidence_threshold).dtype))
  start = time.perf_counter()
  table = sharding.map_settings(one_setting, settings, prices, actions, confidence,
                                batch_size=batch_size)
  seconds = time.perf_counter() - start
  sharpe = table['sharpe']
  return {'settings': num_settings, 'bars': len(prices), 'devices': jax.local_device_count(),
          'batch_size': batch_size, 'seconds_with_compile': seconds,
          'setting_bars_per_s': num_settings * len(prices) / seconds,
          'finite_sharpe_share': float(np.isfinite(sharpe).mean()),
          'best_sharpe': float(np.nanmax(sharpe))}


def main(argv):
  del argv
  os.makedirs(FLAGS.out, exist_ok=True)
  path = os.path.join(FLAGS.out, 'gpu_check.json')
  tiny = FLAGS.tiny
  seed_config = (model.ModelConfig(**profiling.TINY_MODEL) if tiny else model.ModelConfig())
  report = {'mode': 'tiny' if tiny else 'full', 'seconds': {}}
  sections = [
      ('device', device_section),
      ('parity', lambda: parity_section(seed_config, 8 if tiny else 32)),
      ('train_step', lambda: train_step_section(tiny)),
      ('latency', lambda: latency_section(seed_config, 20 if tiny else 200)),
      ('sweep', lambda: sweep_section(tiny, FLAGS.settings, FLAGS.sweep_batch)),
  ]
  for name, run in sections:
    start = time.perf_counter()
    report[name] = run()
    report['seconds'][name] = time.perf_counter() - start
    with open(path, 'w') as f:
      json.dump(report, f, indent=1, default=float)
    print(f'{name}: {report["seconds"][name]:.1f} s', flush=True)
  print(f'report: {path}')


if __name__ == '__main__':
  app.run(main)
