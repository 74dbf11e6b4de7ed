"""The JAX backtester against a plain per-bar Python loop, hand-computed cases, vmap and sweep."""

import itertools

import jax
import numpy as np
import pandas as pd
import pytest

from himari_jax.backtest import engine as backtest
from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.data import ohlcv as data
from himari_jax.stats import metrics


def reference_backtest(opens, closes, actions, confidence, *, capital=100_000.0,
                       commission=0.001, slippage=0.0005, commission_sell=None,
                       slippage_sell=None, max_position_pct=0.10, threshold=0.0, fill='close',
                       allow_short=False, sizing='confidence'):
  """SPEC section 6 as the seed wrote it: one Python iteration per bar, plain floats.

  Returns a list of per-bar tuples (qty, price, commission, slippage, position, cash, equity).
  """
  commission_sell = commission if commission_sell is None else commission_sell
  slippage_sell = slippage if slippage_sell is None else slippage_sell
  cash, position, rows = capital, 0.0, []
  for t in range(len(closes)):
    if fill == 'close':
      action, conf, ref = actions[t], confidence[t], closes[t]
    elif t == 0:
      action, conf, ref = HOLD, 0.0, opens[t]
    else:
      action, conf, ref = actions[t - 1], confidence[t - 1], opens[t]
    if action != HOLD and conf < threshold:
      action = HOLD
    budget = max(cash + position * ref, 0.0)
    fraction = conf * max_position_pct if sizing == 'confidence' else max_position_pct
    qty = price = fee = slip = 0.0
    if action == BUY:
      buy_price = ref * (1 + slippage)
      notional = budget / (1 + commission) if sizing == 'full' else fraction * budget
      wanted = notional / buy_price - position
      if sizing == 'full':  # covering a short: as much as cash can pay
        wanted = min(wanted, max(cash, 0.0) / (buy_price * (1 + commission)))
      # The backtester tolerates an overdraft of 1e-6 of equity (float32 rounding).
      if wanted > 0 and wanted * buy_price * (1 + commission) <= cash + 1e-6 * budget:
        qty, price = wanted, buy_price
        fee, slip = wanted * buy_price * commission, wanted * ref * slippage
    elif action == SELL:
      sell_price = ref * (1 - slippage_sell)
      target = 0.0
      if allow_short:
        notional = budget / (1 + commission_sell) if sizing == 'full' else fraction * budget
        target = -notional / sell_price
      if position > target:
        qty, price = target - position, sell_price
        fee, slip = -qty * sell_price * commission_sell, -qty * ref * slippage_sell
    cash = cash - qty * price - fee
    position = position + qty
    rows.append((qty, price, fee, slip, position, cash, cash + position * closes[t]))
  return rows


def random_market(num_bars, seed):
  rng = np.random.default_rng(seed)
  closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, num_bars)))
  opens = np.concatenate([[100.0], closes[:-1]]) * np.exp(rng.normal(0, 0.003, num_bars))
  actions = rng.choice(3, num_bars, p=[0.25, 0.4, 0.35])
  confidence = rng.uniform(0.34, 1.0, num_bars)
  return opens, closes, actions, confidence


def crossover_signal(closes):
  """BUY while the 24-bar mean is above the 168-bar mean, else SELL; confidence in [0.5, 1)."""
  closes = pd.Series(closes)
  fast = closes.rolling(24, min_periods=1).mean().to_numpy()
  slow = closes.rolling(168, min_periods=1).mean().to_numpy()
  return np.where(fast > slow, BUY, SELL), 0.5 + 0.5 * np.tanh(20 * np.abs(fast / slow - 1))


def assert_matches_reference(result, expected, rtol):
  expected = np.asarray(expected)
  fills = np.asarray(result.fill_qty) != 0
  np.testing.assert_array_equal(fills, expected[:, 0] != 0, err_msg='fill bars differ')
  for column, name in enumerate(('fill_qty', 'fill_price', 'commission', 'slippage',
                                 'position', 'cash', 'equity')):
    # Cash can end at ~0 after a full-size buy: compare it on the scale of the column.
    scale = np.max(np.abs(expected[:, column]))
    np.testing.assert_allclose(np.asarray(getattr(result, name)), expected[:, column],
                               rtol=rtol, atol=rtol * scale, err_msg=name)


OPTIONS = [dict(fill=f, allow_short=s, sizing=z)
           for f, s, z in itertools.product(backtest.FILLS, (False, True), backtest.SIZINGS)]


@pytest.mark.parametrize('options', OPTIONS, ids=lambda o: '-'.join(map(str, o.values())))
def test_matches_reference_on_random_data(options):
  opens, closes, actions, confidence = random_market(400, seed=len(str(options)))
  settings = dict(commission=0.002, slippage=0.001, commission_sell=0.0015,
                  slippage_sell=0.0005, max_position_pct=0.3, **options)
  expected = reference_backtest(opens, closes, actions, confidence, threshold=0.5, **settings)
  params = backtest.make_params(confidence_threshold=0.5, **settings)
  with jax.enable_x64(True):
    result = backtest.run_backtest(backtest.Prices(opens, closes), actions, confidence, params)
    assert_matches_reference(result, expected, rtol=1e-9)
  assert sum(row[0] != 0 for row in expected) > 20  # the case exercises many fills


@pytest.mark.parametrize('options', [dict(), dict(fill='next_open'),
                                     dict(allow_short=True, sizing='fixed'), dict(sizing='full')],
                         ids=['seed', 'next_open', 'short_fixed', 'full'])
def test_matches_reference_on_real_data(options):
  frame = data.builtin_dataset('btc_usdt_1h_2025_2026')
  opens, closes = frame['open'].to_numpy(), frame['close'].to_numpy()
  actions, confidence = crossover_signal(closes)
  expected = reference_backtest(opens, closes, actions, confidence, threshold=0.6, **options)
  params = backtest.make_params(confidence_threshold=0.6, **options)
  with jax.enable_x64(True):
    assert_matches_reference(backtest.run_backtest(frame, actions, confidence, params), expected,
                             rtol=1e-9)
  # The default float32 path: the same fills, equity within accumulated rounding.
  expected32 = reference_backtest(
      opens.astype(np.float32), closes.astype(np.float32), actions,
      confidence.astype(np.float32), threshold=0.6, **options)
  result32 = backtest.run_backtest(frame, actions, confidence, params)
  np.testing.assert_array_equal(np.asarray(result32.fill_qty) != 0,
                                np.asarray(expected32)[:, 0] != 0)
  np.testing.assert_allclose(result32.equity, np.asarray(expected32)[:, 6], rtol=2e-5)


def run(closes, actions, confidence, opens=None, **settings):
  closes = np.asarray(closes, dtype=np.float64)
  opens = closes if opens is None else np.asarray(opens, dtype=np.float64)
  params = backtest.make_params(**settings)
  return backtest.run_backtest(backtest.Prices(opens, closes), np.asarray(actions),
                               np.asarray(confidence, dtype=np.float64), params)


def test_one_round_trip_by_hand():
  result = run([100.0, 105.0, 110.0], [BUY, HOLD, SELL], [1.0, 0.0, 1.0])
  # BUY at close 100: fill 100 * 1.0005 = 100.05 for a target of 1.0 * 10 % of 100,000.
  qty = 10_000 / 100.05
  np.testing.assert_allclose(result.fill_qty, [qty, 0.0, -qty], rtol=1e-6)
  np.testing.assert_allclose(result.fill_price, [100.05, 0.0, 109.945], rtol=1e-7)
  # Commission: 0.1 % of 10,000 and of qty * 109.945 = 10,989.0055; slippage: qty * 0.05.
  np.testing.assert_allclose(result.commission, [10.0, 0.0, 10.9890055], rtol=1e-6)
  np.testing.assert_allclose(result.slippage, [4.9975012, 0.0, 5.4972514], rtol=1e-6)
  # Cash after the buy: 100,000 - 10,000 - 10; equity marked at 100 and 105; flat at the end.
  np.testing.assert_allclose(result.cash[:2], [89_990.0, 89_990.0], rtol=1e-7)
  np.testing.assert_allclose(result.equity, [99_985.0025, 100_484.7526, 100_968.0165],
                             rtol=1e-7)
  assert float(result.position[-1]) == 0.0
  stats = metrics.trade_stats(result, 100_000.0)
  assert int(stats.num_round_trips) == 1 and int(stats.wins) == 1
  np.testing.assert_allclose(stats.gross_profit, 968.0165, rtol=1e-6)
  assert int(stats.holding_bars) == 2


def test_all_hold_is_flat_with_no_trades():
  result = run([100.0, 90.0, 120.0, 80.0], [HOLD] * 4, [0.9] * 4)
  np.testing.assert_array_equal(result.equity, [100_000.0] * 4)
  assert not np.any(np.asarray(result.fill_qty))
  values = metrics.compute_metrics(result, metrics.market_returns(np.asarray(
      [100.0, 90.0, 120.0, 80.0])), 100_000.0)
  assert float(values['total_return']) == 0.0 and int(values['num_trades']) == 0
  assert float(values['max_drawdown']) == 0.0 and np.isnan(values['sharpe'])


def test_buy_then_price_doubles():
  # Full sizing without costs: the equity doubles with the price.
  result = run([50.0, 100.0], [BUY, HOLD], [1.0, 1.0], sizing='full', commission=0.0,
               slippage=0.0)
  np.testing.assert_allclose(result.equity, [100_000.0, 200_000.0], rtol=1e-7)
  # Seed sizing at confidence 0.8: 8 % of equity gains 100 %, minus the entry costs.
  result = run([50.0, 100.0], [BUY, HOLD], [0.8, 0.8])
  qty = 8_000 / 50.025
  np.testing.assert_allclose(result.equity[-1], 100_000 - 8_000 - 8.0 + qty * 100.0, rtol=1e-7)


def test_sell_without_position_does_nothing():
  result = run([100.0, 101.0, 99.0], [SELL, SELL, HOLD], [1.0, 1.0, 1.0])
  assert not np.any(np.asarray(result.fill_qty))
  np.testing.assert_array_equal(result.equity, [100_000.0] * 3)
  # With shorting the same SELL opens a short of the BUY-sized target.
  result = run([100.0, 101.0, 99.0], [SELL, SELL, HOLD], [1.0, 1.0, 1.0], allow_short=True)
  np.testing.assert_allclose(result.fill_qty[0], -10_000 / 99.95, rtol=1e-6)
  assert float(result.position[-1]) < 0


def test_buy_never_reduces_and_is_skipped_without_cash():
  result = run([100.0, 100.0, 100.0], [BUY, BUY, BUY], [1.0, 0.5, 1.0])
  np.testing.assert_allclose(result.fill_qty[1:], [0.0, 0.0], atol=0)
  # A 100 % target costs more than all cash once commission is added: skipped.
  result = run([100.0, 100.0], [BUY, HOLD], [1.0, 1.0], sizing='fixed', max_position_pct=1.0)
  assert not np.any(np.asarray(result.fill_qty))
  result = run([100.0, 100.0], [BUY, HOLD], [1.0, 1.0], sizing='full')
  np.testing.assert_allclose(result.cash[-1], 0.0, atol=0.5)


def test_next_open_fill_and_threshold():
  closes, opens = [100.0, 110.0, 120.0], [99.0, 105.0, 118.0]
  result = run(closes, [BUY, SELL, BUY], [1.0, 1.0, 1.0], opens=opens, fill='next_open')
  # Bar 0's BUY fills at bar 1's open, bar 1's SELL at bar 2's open, bar 2's BUY never.
  np.testing.assert_allclose(result.fill_price, [0.0, 105 * 1.0005, 118 * 0.9995], rtol=1e-7)
  np.testing.assert_allclose(result.confidence, [0.0, 1.0, 1.0])
  # Confidence below the threshold is HOLD; equal to it trades.
  result = run([100.0, 100.0], [BUY, HOLD], [0.59, 0.0], confidence_threshold=0.6)
  assert not np.any(np.asarray(result.fill_qty))
  result = run([100.0, 100.0], [BUY, HOLD], [0.6, 0.0], confidence_threshold=0.6)
  assert float(result.fill_qty[0]) > 0


def test_vmap_over_64_settings_equals_single_runs():
  opens, closes, actions, confidence = random_market(300, seed=7)
  grid = backtest.make_grid(
      fill=backtest.FILLS, allow_short=(False, True), sizing=('confidence', 'full'),
      confidence_threshold=(0.0, 0.7), commission=(0.0, 0.002), slippage=(0.0, 0.001))
  assert grid.sizing.shape == (64,)
  prices = backtest.Prices(opens, closes)
  batched = jax.vmap(backtest.run_backtest, in_axes=(None, None, None, 0))(
      prices, actions, confidence, grid)
  for i in range(64):
    single = backtest.run_backtest(prices, actions, confidence,
                                   jax.tree.map(lambda leaf, i=i: leaf[i], grid))
    np.testing.assert_array_equal(np.asarray(batched.fill_qty[i]) != 0,
                                  np.asarray(single.fill_qty) != 0)
    np.testing.assert_allclose(batched.equity[i], single.equity, rtol=1e-6)


def _single_run_metrics(opens, closes, signal, confidence, grid):
  """compute_metrics of run_backtest for every setting of the grid, in float64."""
  with jax.enable_x64(True):
    market = metrics.market_returns(closes)
    results = jax.vmap(backtest.run_backtest, in_axes=(None, None, None, 0))(
        backtest.Prices(opens, closes), signal, confidence, grid)
    return jax.vmap(lambda r: metrics.compute_metrics(r, market, 100_000.0))(results)


@pytest.mark.parametrize('which', ['all', 'core'])
def test_sweep_table_matches_single_runs(which):
  opens, closes, actions, confidence = random_market(300, seed=3)
  signals = np.stack([actions, np.roll(actions, 5)])
  confidences = np.stack([confidence, confidence[::-1]])
  grid = backtest.make_grid(confidence_threshold=(0.0, 0.6), fill=backtest.FILLS,
                            allow_short=(False, True))
  # float64, so that the sweep (batch_size 6: 2 signals x 3 settings per chunk, the last
  # chunk padded) must agree with single runs to rounding.
  with jax.enable_x64(True):
    table = backtest.sweep(backtest.Prices(opens, closes), signals, confidences, grid,
                           signal_names=['a', 'b'], benchmark=True, metrics=which,
                           batch_size=6)
  # 16 rows, then buy-and-hold for each of the two fill timings (the grid's costs are one).
  assert len(table) == 18 and list(table['signal'][:17:8]) == ['a', 'b', 'buy_and_hold']
  benchmark = table[table['signal'] == 'buy_and_hold']
  assert list(benchmark['fill']) == list(backtest.FILLS)
  assert list(benchmark['num_trades']) == [1, 1] and list(benchmark['sizing']) == ['full'] * 2
  assert list(table.columns[:2]) == ['signal', 'initial_capital']
  names = metrics.METRIC_NAMES if which == 'all' else metrics.CORE_METRIC_NAMES
  assert set(names) <= set(table.columns)
  if which == 'core':
    assert 'var_95' not in table.columns
  for s in range(2):
    expected = _single_run_metrics(opens, closes, signals[s], confidences[s], grid)
    rows = table[table['signal'] == 'ab'[s]]
    assert list(rows['fill']) == [backtest.FILLS[int(f)] for f in grid.fill_next_open]
    assert rows['num_trades'].min() > 0
    for name in names:
      np.testing.assert_allclose(rows[name], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize('change, message', [
    (dict(closes=np.ones(5)), 'one length'),
    (dict(closes=np.array([100.0, np.nan, 100.0, 100.0])), r'prices.close .* bar 1 is nan'),
    (dict(opens=np.array([100.0, 100.0, -1.0, 100.0])), r'prices.open .* bar 2'),
    (dict(actions=np.array([BUY, 3, HOLD, SELL])), r'actions .* bar 1 is 3'),
    (dict(confidence=np.array([0.5, 1.5, 0.5, 0.5])), r'confidence .* bar 1 is 1.5'),
])
def test_bad_inputs_raise(change, message):
  inputs = dict(opens=np.full(4, 100.0), closes=np.full(4, 100.0),
                actions=np.array([BUY, HOLD, HOLD, SELL]), confidence=np.full(4, 0.5))
  inputs.update(change)
  with pytest.raises(ValueError, match=message):
    backtest.run_backtest(backtest.Prices(inputs['opens'], inputs['closes']), inputs['actions'],
                          inputs['confidence'], backtest.make_params())


@pytest.mark.parametrize('settings, message', [
    (dict(commission=-0.001), 'commission_buy must be in'),
    (dict(slippage_sell=-0.1), 'slippage_sell must be in'),
    (dict(confidence_threshold=1.2), 'confidence_threshold must be in'),
    (dict(confidence_threshold=-0.1), 'confidence_threshold must be in'),
    (dict(initial_capital=0.0), 'initial_capital must be'),
    (dict(fill='open'), 'fill must be one of'),
    (dict(sizing='kelly'), 'sizing must be one of'),
])
def test_bad_settings_raise(settings, message):
  with pytest.raises(ValueError, match=message):
    backtest.make_params(**settings)


def test_bad_prices_shape_and_batched_settings_raise():
  with pytest.raises(ValueError, match=r'\(N, 2\)'):
    backtest.as_prices(np.ones((4, 3)))
  grid = backtest.make_grid(commission=(0.0, 0.001))
  bad = grid.replace(commission_buy=np.array([0.0, -0.5]))
  with pytest.raises(ValueError, match='commission_buy must be in'):
    backtest.sweep(np.ones((4, 2)), np.full(4, HOLD), np.full(4, 0.5), bad)
  with pytest.raises(ValueError, match="metrics must be 'all' or 'core'"):
    backtest.sweep(np.ones((4, 2)), np.full(4, HOLD), np.full(4, 0.5), grid, metrics='fast')


def test_readme_sweep_snippet_runs(repo_root):
  # The README's Python example, as written, on the bundled data.
  readme = (repo_root / 'README.md').read_text()
  snippet = readme.split('```python\n', 1)[1].split('```', 1)[0]
  namespace = {}
  exec(snippet, namespace)  # noqa: S102 - our own README
  best = namespace['best']
  assert len(namespace['screen']) == 40 and len(best) == 5
  assert set(metrics.CORE_METRIC_NAMES) <= set(best.columns)
  assert np.all(np.diff(best['sharpe'].to_numpy()) <= 0)
