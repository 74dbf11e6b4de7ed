r"""Benchmark: the jitted backtester and `sweep` against a per-bar Python loop (and vectorbt).

Signal: a moving-average crossover (BUY while the 24-bar mean is above the 168-bar mean,
else SELL) with confidence `0.5 + 0.5 * tanh(20 * |fast / slow - 1|)` in [0.5, 1).

(a) One backtest with the seed's settings: jitted `run_backtest` vs the per-bar Python loop
    (the seed's algorithm on plain floats, as in tests/test_backtest.py).
(b) `sweep` over `--configs` settings (thresholds x commissions x fills x shorting x position
    sizes) in one compiled call vs the Python loop run once per setting. The loop's time is
    measured on `--python_runs` settings and extrapolated; it computes only the equity curve.
    The sweep runs twice: `metrics='core'` (returns, volatility, Sharpe, Sortino, drawdown,
    Calmar, trades from running sums: the like-for-like row) and `metrics='all'` (every
    SPEC metric, with VaR / CVaR over each setting's whole return series).
(c) Where vectorbt is installed: the seed's semantics over a thresholds x commissions x
    slippages grid with `Portfolio.from_order_func` (a numba order function), vs `sweep` on
    the same grid. Both get the same final equities (printed as a check).

(d) `policy.sweep_policies` of `--policies` decision policies (entry x exit x min_hold x cooldown x
    band x sizing) on `--policy_dataset` in one compiled call, `metrics='core'` and 'all'. The
    probabilities come from the crossover's fast / slow gap through a softmax.

The sweeps (b) and (d) spread their settings over the local devices: `--device_counts`
runs them on the first 1, 2, ... devices and reports setting-bars/s for each count. Fake CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) check the plumbing; they share
the same cores, so they only speed a sweep up where cores outnumber what one device uses.

Compile time is reported apart from run time (best of `--repeats`).

  python benchmarks/bench_backtest.py [--dataset=btc_usdt_1h_2020_2024] [--configs=1000]
      [--policies=10000] [--policy_dataset=btc_usdt_1h_2025_2026] [--sections=abcd]
      [--metrics=core,all] [--device_counts=1,8]
"""

import math
import os
import time

import jax
import numpy as np
import pandas as pd
from absl import app, flags

from himari_jax.backtest import engine as backtest
from himari_jax.backtest import policy
from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.data import ohlcv as data

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset', 'btc_usdt_1h_2020_2024', 'Builtin dataset name or CSV path.')
flags.DEFINE_integer('configs', 1000, 'Settings in the sweeps (b) and (c); a multiple of 200.')
flags.DEFINE_integer('python_runs', 5, 'Settings the Python loop runs in (b), extrapolated.')
flags.DEFINE_integer('repeats', 3, 'Timed runs of each compiled call (the best is reported).')
flags.DEFINE_integer('batch_size', 1024, 'Settings simulated together by `sweep`.')
flags.DEFINE_bool('vectorbt', True, 'Run (c) when vectorbt is importable.')
flags.DEFINE_integer('policies', 10_000, 'Policies in the policy sweep (d), up to 15,000.')
flags.DEFINE_string('policy_dataset', 'btc_usdt_1h_2025_2026', 'Dataset of the policy sweep (d).')
flags.DEFINE_integer('policy_batch_size', policy.BATCH_SIZE,
                     'Policies simulated together by `policy.sweep_policies` in (d).')
flags.DEFINE_string('sections', 'abcd', 'Sections to run, e.g. bd to compare (b) and (d).')
flags.DEFINE_list('metrics', ['core', 'all'], "Metric modes of the sweeps (b), (c), (d).")
flags.DEFINE_list('device_counts', None,
                  'Device counts the sweeps (b) and (d) run on (default: all local devices).')


def device_counts() -> list[int]:
  """--device_counts as ints, each at most the local device count."""
  available = jax.local_device_count()
  counts = [int(c) for c in FLAGS.device_counts or [available]]
  if not all(1 <= c <= available for c in counts):
    raise app.UsageError(f'--device_counts={counts}: {available} local device(s) here')
  return counts


def crossover_signal(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  close = pd.Series(close)
  fast = close.rolling(24, min_periods=1).mean().to_numpy()
  slow = close.rolling(168, min_periods=1).mean().to_numpy()
  return np.where(fast > slow, BUY, SELL), 0.5 + 0.5 * np.tanh(20 * np.abs(fast / slow - 1))


def python_backtest(opens, closes, actions, confidence, settings):
  """The per-bar reference loop; returns the equity at every close."""
  s = settings
  cash, position, equity = s['initial_capital'], 0.0, []
  for t in range(len(closes)):
    if s['fill'] == 'close':
      action, conf, ref = actions[t], confidence[t], closes[t]
    elif t == 0:
      action, conf, ref = HOLD, 0.0, opens[t]
    else:
      action, conf, ref = actions[t - 1], confidence[t - 1], opens[t]
    if action != HOLD and conf >= s['confidence_threshold']:
      budget = max(cash + position * ref, 0.0)
      fraction = conf * s['max_position_pct'] if s['sizing'] == 'confidence' else (
          s['max_position_pct'])
      if action == BUY:
        price = ref * (1 + s['slippage_buy'])
        notional = (budget / (1 + s['commission_buy']) if s['sizing'] == 'full'
                    else fraction * budget)
        qty = notional / price - position
        if s['sizing'] == 'full':
          qty = min(qty, max(cash, 0.0) / (price * (1 + s['commission_buy'])))
        cost = qty * price * (1 + s['commission_buy'])
        if qty > 0 and cost <= cash + 1e-6 * budget:
          cash -= cost
          position += qty
      else:
        price = ref * (1 - s['slippage_sell'])
        target = 0.0
        if s['allow_short']:
          notional = (budget / (1 + s['commission_sell']) if s['sizing'] == 'full'
                      else fraction * budget)
          target = -notional / price
        if position > target:
          qty = position - target
          cash += qty * price * (1 - s['commission_sell'])
          position = target
    equity.append(cash + position * closes[t])
  return equity


# Best CPU time (all threads) of the last `best_time` call: on a shared, loaded machine it
# varies less than wall time, so compare changes by it.
_CPU = {'best': math.nan}


def table_difference(table: pd.DataFrame, other: pd.DataFrame) -> float:
  """Largest absolute difference between two sweep tables' numeric columns."""
  numeric = table.select_dtypes('number').columns
  return float(np.nanmax(np.abs(table[numeric].to_numpy(np.float64)
                                - other[numeric].to_numpy(np.float64))))


def best_time(fn, repeats):
  """(first call seconds, best of `repeats` later calls, last result); CPU time in _CPU."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  best = cpu = math.inf
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    result = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
    cpu = min(cpu, time.process_time() - cpu_start)
  _CPU['best'] = cpu
  return first, best, result


def settings_at(params, i):
  return backtest.params_to_dict(jax.tree.map(lambda leaf: leaf[i], params))


def bench_single(frame, lists, actions, confidence):
  params = backtest.make_params()
  _, checked, result = best_time(
      lambda: backtest.run_backtest(frame, actions, confidence, params).equity, FLAGS.repeats)
  # The compiled simulation alone: traced inputs skip the validation of concrete ones.
  compiled = jax.jit(backtest.run_backtest)
  inputs = jax.device_put((backtest.as_prices(frame), actions, confidence))
  first, run, _ = best_time(lambda: compiled(*inputs, params).equity, FLAGS.repeats)
  python = math.inf
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    expected = python_backtest(*lists, backtest.params_to_dict(params))
    python = min(python, time.perf_counter() - start)
  n = len(frame)
  print(f'(a) one backtest, {n:,} bars, seed settings')
  print(f'    jax: compile {first - run:.2f} s, run {1e3 * run:.2f} ms '
        f'({n / run / 1e6:.1f} M bars/s); run_backtest with input checks {1e3 * checked:.2f} ms')
  print(f'    python loop: {1e3 * python:.1f} ms ({n / python / 1e6:.2f} M bars/s)')
  print(f'    speed-up: {python / run:.0f}x (with input checks {python / checked:.0f}x); '
        f'max |equity / python - 1| = '
        f'{np.max(np.abs(np.asarray(result) / np.asarray(expected) - 1)):.1e} (float32)')


def bench_sweep(frame, lists, actions, confidence):
  grid = backtest.make_grid(
      confidence_threshold=np.linspace(0.5, 0.95, 10), commission=np.linspace(0.0, 0.002, 5),
      fill=backtest.FILLS, allow_short=(False, True),
      max_position_pct=np.linspace(0.1, 0.5, max(1, FLAGS.configs // 200)))
  num, n = int(np.shape(grid.sizing)[0]), len(frame)
  runs = {}
  cpu = {}
  for metrics in FLAGS.metrics:
    for count in device_counts():
      runs[metrics, count] = best_time(lambda metrics=metrics, count=count: backtest.sweep(
          frame, actions, confidence, grid, metrics=metrics, batch_size=FLAGS.batch_size,
          devices=jax.local_devices()[:count]), FLAGS.repeats)
      cpu[metrics, count] = _CPU['best']
  reference = runs[FLAGS.metrics[0], device_counts()[0]][2]
  picks = np.linspace(0, num - 1, FLAGS.python_runs).astype(int)
  python, worst = 0.0, 0.0
  for i in picks:
    start = time.perf_counter()
    equity = python_backtest(*lists, settings_at(grid, i))
    python += time.perf_counter() - start
    worst = max(worst, abs(reference['final_equity'][i] / equity[-1] - 1))
  python = python / len(picks) * num
  print(f'(b) sweep of {num} settings x {n:,} bars in one compiled call, batch_size '
        f'{FLAGS.batch_size}')
  print(f'    python loop x {num} (extrapolated from {len(picks)} runs, equity only): '
        f'{python:.1f} s ({num * n / python / 1e6:.2f} M setting-bars/s)')
  labels = {'core': "metrics='core' (10 metrics)", 'all': "metrics='all' (all 22 metrics)"}
  for (metrics, count), (first, run, _) in runs.items():
    print(f'    jax {labels[metrics]} on {count} device(s): compile {first - run:.2f} s, run '
          f'{run:.3f} s ({num * n / run / 1e6:.1f} M setting-bars/s; CPU time '
          f'{cpu[metrics, count]:.3f} s, {num * n / cpu[metrics, count] / 1e6:.1f} M '
          f'setting-bars per CPU second); speed-up (run) {python / run:.0f}x, (compile + run) '
          f'{python / first:.0f}x')
  print(f'    max |final equity / python - 1| = {worst:.1e}')
  first_count = device_counts()[0]
  for count in device_counts()[1:]:
    for metrics in FLAGS.metrics:
      print(f"    {count} vs {first_count} device(s), metrics='{metrics}': max |difference| "
            f'{table_difference(runs[metrics, count][2], runs[metrics, first_count][2]):.1e}')
  if {'core', 'all'} <= set(FLAGS.metrics):
    core, full = runs['core', device_counts()[0]][2], runs['all', device_counts()[0]][2]
    sharpe = np.max(np.abs(core['sharpe'] / full['sharpe'] - 1))
    print(f'    core vs all Sharpe (float32 running sums vs two-pass): max relative difference '
          f'{sharpe:.1e}')


def bench_vectorbt(frame, actions, confidence):
  import numba
  import vectorbt as vbt
  from vectorbt.portfolio import nb as portfolio_nb
  from vectorbt.portfolio.enums import Direction

  @numba.njit
  def seed_order_nb(c, actions, confidence, thresholds, commissions, slippages):
    """The seed's policy: BUY to confidence * 10 % of equity, SELL to flat."""
    action, conf = actions[c.i], confidence[c.i]
    if action == HOLD or conf < thresholds[c.col]:
      return portfolio_nb.NoOrder
    price = c.close[c.i, c.col]
    if action == BUY:
      value = c.cash_now + c.position_now * price
      size = conf * 0.1 * value / (price * (1 + slippages[c.col])) - c.position_now
    else:
      size = -c.position_now
    if size == 0 or (action == BUY and size < 0):
      return portfolio_nb.NoOrder
    return portfolio_nb.order_nb(size=size, price=price, fees=commissions[c.col],
                                 slippage=slippages[c.col], direction=Direction.LongOnly,
                                 allow_partial=False)

  side = round(FLAGS.configs ** (1 / 3))
  grid = backtest.make_grid(confidence_threshold=np.linspace(0.5, 0.95, side),
                            commission=np.linspace(0.0, 0.002, side),
                            slippage=np.linspace(0.0, 0.001, side))
  num = int(np.shape(grid.sizing)[0])
  close = np.broadcast_to(frame['close'].to_numpy()[:, None], (len(frame), num))
  args = (actions.astype(np.int64), confidence, np.asarray(grid.confidence_threshold),
          np.asarray(grid.commission_buy), np.asarray(grid.slippage_buy))

  def simulate():
    portfolio = vbt.Portfolio.from_order_func(close, seed_order_nb, *args, init_cash=100_000.0,
                                              freq='1h')
    return portfolio, portfolio.final_value().to_numpy()

  def simulate_and_metrics():
    portfolio, final = simulate()
    returns = portfolio.returns().vbt.returns(freq='1h', year_freq=pd.Timedelta(hours=8760))
    for metric in ('sharpe_ratio', 'sortino_ratio', 'max_drawdown', 'annualized',
                   'annualized_volatility', 'value_at_risk', 'cond_value_at_risk'):
      getattr(returns, metric)()
    return final

  vbt_first, vbt_run, (_, vbt_final) = best_time(simulate, FLAGS.repeats)
  _, vbt_metrics, _ = best_time(simulate_and_metrics, 1)
  n = len(frame)
  print(f'(c) vectorbt {vbt.__version__}: seed semantics, {num} settings x {n:,} bars')
  print(f'    vectorbt from_order_func: first call {vbt_first:.2f} s (numba compile), run '
        f'{vbt_run:.2f} s ({num * n / vbt_run / 1e6:.1f} M setting-bars/s); with 7 metrics '
        f'{vbt_metrics:.2f} s')
  for metrics in FLAGS.metrics:
    first, run, table = best_time(lambda metrics=metrics: backtest.sweep(
        frame, actions, confidence, grid, metrics=metrics, batch_size=FLAGS.batch_size),
                                  FLAGS.repeats)
    print(f"    jax sweep metrics='{metrics}': first call {first:.2f} s, run {run:.3f} s "
          f'({num * n / run / 1e6:.1f} M setting-bars/s); vs vectorbt simulation only '
          f'{vbt_run / run:.1f}x, vs simulation + metrics {vbt_metrics / run:.1f}x; '
          f'max |final equity / vectorbt - 1| = '
          f'{np.max(np.abs(table["final_equity"].to_numpy() / vbt_final - 1)):.1e}')


def policy_grid(num: int) -> policy.PolicyParams:
  """`num` policies evenly spread over 15,000: 10 entries x 5 exits x 5 min_holds x
  4 cooldowns x 5 bands x 3 sizings."""
  axes = np.meshgrid(np.linspace(0.05, 0.5, 10), (0.0, 0.05, 0.1, 0.2, 0.3), (0, 3, 6, 12, 24),
                     (0, 6, 12, 24), (0.0, 0.005, 0.01, 0.02, 0.05), np.arange(3),
                     indexing='ij')
  pick = np.linspace(0, axes[0].size - 1, num).astype(int)
  entry, gap, min_hold, cooldown, band, sizing = (a.ravel()[pick] for a in axes)
  grid = policy.PolicyParams(
      signal=np.zeros(num, np.int32), entry=entry, exit=entry - gap, min_hold=min_hold,
      cooldown=cooldown, sizing=sizing.astype(np.int32), max_position_pct=np.full(num, 0.1),
      target_vol=np.full(num, 0.05), max_leverage=np.full(num, 0.1), band=band,
      allow_short=np.zeros(num, np.int32), trim=np.ones(num, np.int32))
  policy.check_policy(grid)
  return grid


def bench_policy_sweep():
  frame = data.load_dataset(FLAGS.policy_dataset)
  close = frame['close'].to_numpy()
  fast = pd.Series(close).rolling(24, min_periods=1).mean().to_numpy()
  slow = pd.Series(close).rolling(168, min_periods=1).mean().to_numpy()
  gap = 40 * (fast / slow - 1)
  logits = np.stack([-gap, np.zeros_like(gap), gap], axis=1)
  probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
  grid = policy_grid(FLAGS.policies)
  num, n = int(np.shape(grid.entry)[0]), len(frame)
  params = backtest.make_params()
  print(f'(d) policy sweep of {num:,} policies x {n:,} bars ({FLAGS.policy_dataset}) in one '
        f'compiled call, batch_size {FLAGS.policy_batch_size}')
  for metrics in FLAGS.metrics:
    for count in device_counts():
      first, run, table = best_time(lambda metrics=metrics, count=count: policy.sweep_policies(
          frame, probs, grid, params, metrics=metrics, batch_size=FLAGS.policy_batch_size,
          devices=jax.local_devices()[:count]), FLAGS.repeats)
      print(f"    metrics='{metrics}' on {count} device(s): compile {first - run:.2f} s, run "
            f'{run:.3f} s '
            f'({num * n / run / 1e6:.1f} M setting-bars/s; CPU time {_CPU["best"]:.3f} s, '
            f'{num * n / _CPU["best"] / 1e6:.1f} M setting-bars per CPU second); trades per '
            f'policy: median {table["num_trades"].median():.0f}, range '
            f'{table["num_trades"].min()}-{table["num_trades"].max()}')


def main(argv):
  del argv
  frame = data.load_dataset(FLAGS.dataset)
  actions, confidence = crossover_signal(frame['close'].to_numpy())
  # Confidences as models give them (float32), so every engine compares the same numbers
  # with the thresholds.
  confidence = confidence.astype(np.float32).astype(np.float64)
  lists = (frame['open'].tolist(), frame['close'].tolist(), actions.tolist(), confidence.tolist())
  print(f'{FLAGS.dataset}: {len(frame):,} bars; jax {jax.__version__} on '
        f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  if 'a' in FLAGS.sections:
    bench_single(frame, lists, actions, confidence)
  if 'b' in FLAGS.sections:
    bench_sweep(frame, lists, actions, confidence)
  if 'd' in FLAGS.sections:
    bench_policy_sweep()
  if 'c' in FLAGS.sections and FLAGS.vectorbt:
    try:
      bench_vectorbt(frame, actions, confidence)
    except ImportError as error:
      print(f'(c) skipped: {error} (pip install vectorbt)')


if __name__ == '__main__':
  app.run(main)
