"""Sweeps sharded over devices: 8 host devices give the same metrics as one device."""

import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

from himari_jax.backtest import engine as backtest
from himari_jax.backtest import policy, sharding
from himari_jax.stats import metrics

REPO = pathlib.Path(__file__).resolve().parent.parent


def make_inputs():
  """Synthetic bars, signals and a 12-setting grid (not a multiple of 8: padding is used)."""
  rng = np.random.default_rng(0)
  close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(300)))
  prices = np.stack([np.r_[close[0], close[:-1]], close], axis=1)
  actions = rng.integers(0, 3, 300).astype(np.int32)
  confidence = rng.uniform(0.3, 1.0, 300).astype(np.float32)
  grid = backtest.make_grid(confidence_threshold=[0.5, 0.6, 0.7], sizing=['confidence', 'full'],
                            commission=[0.0, 0.001])
  return grid, prices, actions, confidence


def one_setting(setting, prices, actions, confidence):
  """Every metric of one backtest setting (what `backtest.sweep` computes per pair)."""
  result = backtest.run_backtest(prices, actions, confidence, setting)
  market = metrics.market_returns(prices[:, 1])
  return metrics.compute_metrics(result, market, setting.initial_capital)


# The child imports this module for the same inputs and per-setting function.
CHILD = f'''
import json, sys
import jax
import numpy as np
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
import test_sharding
from himari_jax.backtest import sharding
assert jax.local_device_count() == 8, jax.devices()
grid, *shared = test_sharding.make_inputs()
table = sharding.map_settings(test_sharding.one_setting, grid, *shared, batch_size=2)
print('RESULT', json.dumps({{k: np.asarray(v).tolist() for k, v in table.items()}}))
'''


def test_one_device_equals_a_plain_vmap():
  grid, *shared = make_inputs()
  table = sharding.map_settings(one_setting, grid, *shared,
                                devices=jax.local_devices()[:1])
  plain = jax.jit(jax.vmap(one_setting, (0, None, None, None)))(grid, *shared)
  assert set(table) == set(plain) and len(table['sharpe']) == 12
  for name, values in plain.items():
    np.testing.assert_allclose(table[name], values, rtol=1e-6, atol=1e-9, err_msg=name)


def test_eight_devices_give_the_one_device_table():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  done = subprocess.run([sys.executable, '-c', CHILD], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  line = next(x for x in done.stdout.splitlines() if x.startswith('RESULT '))
  eight = json.loads(line[len('RESULT '):])
  grid, *shared = make_inputs()
  one = sharding.map_settings(one_setting, grid, *shared, batch_size=2,
                              devices=jax.local_devices()[:1])
  assert set(eight) == set(one)
  for name, values in one.items():
    np.testing.assert_allclose(np.asarray(eight[name], values.dtype), values, rtol=1e-6,
                               atol=1e-9, err_msg=name)


def sweep_tables(devices=None):
  """`backtest.sweep` and `policy.sweep_policies` tables of two signals on 300 bars, in chunks
  of two settings (6 chunks each: 8 devices get one or none, and padding), in float64."""
  grid, prices, actions, confidence = make_inputs()
  rng = np.random.default_rng(1)
  signals = np.stack([actions, rng.integers(0, 3, len(actions)).astype(np.int32)])
  confidences = np.stack([confidence, confidence[::-1]])
  logits = rng.standard_normal((2, len(actions), 3))
  probs = (np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)).astype(np.float32)
  policies = policy.make_policy_grid(entry=[0.1, 0.2, 0.3], sizing=['confidence', 'vol_target'])
  costs = backtest.make_grid(commission=[0.0, 0.001])
  with jax.enable_x64():
    return {
        'backtest': backtest.sweep(prices, signals, confidences, grid, batch_size=4,
                                   devices=devices),
        'policy': policy.sweep_policies(prices, probs, policies, costs, metrics='core',
                                        batch_size=4, devices=devices)}


SWEEP_CHILD = f'''
import sys
import jax
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
import test_sharding
assert jax.local_device_count() == 8, jax.devices()
for name, table in test_sharding.sweep_tables().items():
  print('RESULT', name, table.to_json(orient='split', double_precision=15))
'''


@pytest.mark.slow
def test_sweeps_on_eight_devices_give_the_one_device_tables():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  done = subprocess.run([sys.executable, '-c', SWEEP_CHILD], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  eight = {line.split(' ', 2)[1]: pd.read_json(io.StringIO(line.split(' ', 2)[2]),
                                               orient='split', dtype=False)
           for line in done.stdout.splitlines() if line.startswith('RESULT ')}
  one = sweep_tables(devices=jax.local_devices()[:1])
  assert set(eight) == set(one) == {'backtest', 'policy'}
  for name, table in one.items():
    assert len(table) == 24 and list(eight[name].columns) == list(table.columns)
    # Each chunk of settings runs the same code on the same inputs on any device, but XLA
    # compiles a different program per device count and may round a 'core' ratio's last
    # step differently (about 1e-13 here in float64; in float32 one ulp of the final growth,
    # which CAGR raises to the power periods / bars).
    pd.testing.assert_frame_equal(eight[name], table, check_dtype=False, rtol=1e-9, atol=1e-12)


def test_settings_with_different_lengths_are_rejected():
  with pytest.raises(ValueError, match='same leading axis'):
    sharding.map_settings(lambda s: s['a'], {'a': np.zeros(3), 'b': np.zeros(4)})
