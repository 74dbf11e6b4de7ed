"""SPEC section 7 metrics against independent numpy computations (and empyrical / vectorbt)."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from himari_jax.backtest import engine as backtest
from himari_jax.backtest import report
from himari_jax.constants import BUY, SELL
from himari_jax.stats import metrics

PERIODS = 8760.0


def random_backtest(num_bars=500, seed=0, **settings):
  """A backtest with many fills and long-short flips; returns (result, closes)."""
  rng = np.random.default_rng(seed)
  closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, num_bars)))
  actions = rng.choice(3, num_bars, p=[0.1, 0.8, 0.1])
  confidence = rng.uniform(0.3, 1.0, num_bars)
  params = backtest.make_params(max_position_pct=0.5, **settings)
  return backtest.run_backtest(backtest.Prices(closes, closes), actions, confidence, params), closes


def numpy_metrics(equity, capital, market, risk_free_rate=0.0):
  """The formulas of SPEC section 7, written independently in numpy float64."""
  equity = np.asarray(equity, dtype=np.float64)
  q = np.diff(np.concatenate([[capital], equity])) / np.concatenate([[capital], equity[:-1]])
  excess = q - risk_free_rate / PERIODS
  years = len(q) / PERIODS
  cagr = (equity[-1] / capital) ** (1 / years) - 1
  running_max = np.maximum.accumulate(np.concatenate([[capital], equity]))[1:]
  max_drawdown = np.min(equity / running_max - 1)
  var = np.percentile(q, 5)
  return {
      'total_return': equity[-1] / capital - 1,
      'cagr': cagr,
      'volatility': np.std(q, ddof=1) * np.sqrt(PERIODS),
      'sharpe': excess.mean() / np.std(q, ddof=1) * np.sqrt(PERIODS),
      'sortino': excess.mean() / np.sqrt(np.mean(np.minimum(excess, 0) ** 2)) * np.sqrt(PERIODS),
      'max_drawdown': max_drawdown,
      'calmar': cagr / abs(max_drawdown),
      'var_95': var,
      'cvar_95': q[q <= var].mean(),
      'beta': np.cov(q, market)[0, 1] / np.var(market, ddof=1),
  }


def reference_round_trips(fill_qty, position, cash, capital):
  """Round trips by walking the fills: (profit, holding bars) of every closed trip."""
  trips, entry_cash, entry_bar, prev_pos, prev_cash = [], None, None, 0.0, capital
  for bar, (qty, pos, c) in enumerate(zip(fill_qty, position, cash, strict=True)):
    if qty != 0 and np.sign(pos) != np.sign(prev_pos):
      if prev_pos != 0:  # closes a trip; a flip's cash flow is split by units
        boundary = prev_cash + abs(prev_pos) / abs(qty) * (c - prev_cash)
        trips.append((boundary - entry_cash, bar - entry_bar))
      else:
        boundary = prev_cash
      if pos != 0:
        entry_cash, entry_bar = boundary, bar
    prev_pos, prev_cash = pos, c
  return trips


@pytest.mark.parametrize('risk_free_rate', [0.0, 0.04])
def test_return_metrics_match_numpy(risk_free_rate):
  with jax.enable_x64(True):
    result, closes = random_backtest(sizing='full', allow_short=True)
    market = np.concatenate([[0.0], closes[1:] / closes[:-1] - 1])
    got = metrics.compute_metrics(result, jnp.asarray(market), 100_000.0,
                                  risk_free_rate=risk_free_rate)
    expected = numpy_metrics(result.equity, 100_000.0, market, risk_free_rate)
  for name, value in expected.items():
    np.testing.assert_allclose(float(got[name]), value, rtol=1e-9, err_msg=name)


def test_trade_metrics_match_walking_the_fills():
  with jax.enable_x64(True):
    result, closes = random_backtest(allow_short=True)
    got = metrics.compute_metrics(result, metrics.market_returns(closes), 100_000.0)
  qty, position, cash = (np.asarray(x) for x in (result.fill_qty, result.position, result.cash))
  trips = reference_round_trips(qty, position, cash, 100_000.0)
  profits = np.array([p for p, _ in trips])
  assert len(trips) > 10 and np.any(profits > 0) and np.any(profits < 0)
  assert int(got['num_round_trips']) == len(trips)
  assert int(got['num_trades']) == np.count_nonzero(qty)
  np.testing.assert_allclose(got['win_rate'], np.mean(profits > 0), rtol=1e-12)
  np.testing.assert_allclose(got['profit_factor'],
                             profits[profits > 0].sum() / -profits[profits < 0].sum(), rtol=1e-9)
  np.testing.assert_allclose(got['avg_trade_profit'], profits.mean(), rtol=1e-9)
  np.testing.assert_allclose(got['avg_holding_bars'], np.mean([h for _, h in trips]), rtol=1e-12)
  np.testing.assert_allclose(got['exposure'], np.mean(position != 0), rtol=1e-12)
  np.testing.assert_allclose(got['trade_bar_share'], np.mean(qty != 0), rtol=1e-12)
  np.testing.assert_allclose(got['turnover'], np.sum(np.abs(qty) * np.asarray(result.fill_price))
                             / np.mean(np.asarray(result.equity)), rtol=1e-9)
  np.testing.assert_allclose(got['total_commission'], np.sum(np.asarray(result.commission)),
                             rtol=1e-9)


def test_round_trips_of_a_flip_split_costs_by_units():
  # Long 100 units, then one SELL that closes them and opens a short of the same size.
  closes = np.array([100.0, 110.0, 100.0])
  params = backtest.make_params(allow_short=True, sizing='fixed', max_position_pct=0.1)
  with jax.enable_x64(True):
    result = backtest.run_backtest(backtest.Prices(closes, closes), np.array([BUY, SELL, BUY]),
                                   np.ones(3), params)
    stats = metrics.trade_stats(result, 100_000.0)
  assert int(stats.num_round_trips) == 2
  trips = reference_round_trips(*(np.asarray(x) for x in (
      result.fill_qty, result.position, result.cash)), 100_000.0)
  # Long ~99.95 units 100.05 -> 109.945 less 20.99 commission; then short ~91.85 units
  # 109.945 -> 100.05 less ~19.3 commission (the flip fill's commission split by units).
  np.testing.assert_allclose([p for p, _ in trips], [968.016, 889.568], rtol=1e-5)
  np.testing.assert_allclose(float(stats.gross_profit), trips[0][0] + trips[1][0], rtol=1e-12)
  assert float(stats.gross_loss) == 0.0 and int(stats.holding_bars) == 2


@pytest.mark.parametrize('num', [1, 2, 3, 20, 101, 5000])
def test_value_at_risk_is_numpys_percentile(num):
  rng = np.random.default_rng(num)
  returns = rng.normal(0, 0.01, num).astype(np.float32)
  returns[: num // 3] = 0.0  # ties, as flat bars give
  var, cvar = metrics.value_at_risk(jnp.asarray(returns))
  expected = np.percentile(returns.astype(np.float64), 5)
  np.testing.assert_allclose(float(var), expected, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(float(cvar), returns[returns <= float(var)].mean(), rtol=1e-5)


def test_drawdown_curve_starts_from_the_capital():
  equity = jnp.array([99.0, 101.0, 95.95, 102.0])
  np.testing.assert_allclose(metrics.drawdown_curve(equity, 100.0),
                             [-0.01, 0.0, -0.05, 0.0], atol=1e-6)


def test_numpy_curves_stay_numpy_float64():
  equity = np.array([99.0, 101.0, 95.95, 102.0])
  drawdown = metrics.drawdown_curve(equity, 100.0)
  returns = metrics.period_returns(equity, 100.0)
  assert isinstance(drawdown, np.ndarray) and drawdown.dtype == np.float64
  assert isinstance(returns, np.ndarray) and returns.dtype == np.float64
  np.testing.assert_array_equal(drawdown, equity / [100.0, 101.0, 101.0, 102.0] - 1)
  np.testing.assert_array_equal(returns, equity / [100.0, 99.0, 101.0, 95.95] - 1)
  np.testing.assert_allclose(metrics.drawdown_curve(jnp.asarray(equity), 100.0), drawdown,
                             rtol=1e-6)


def test_flat_curve_ratios_are_nan_not_huge():
  result, closes = random_backtest()
  flat = result.replace(equity=jnp.full_like(result.equity, 100_000.0))
  got = metrics.compute_metrics(flat, metrics.market_returns(closes), 100_000.0)
  assert np.isnan(got['sharpe']) and np.isnan(got['sortino']) and np.isnan(got['calmar'])
  assert float(got['volatility']) == 0.0


def test_sharpe_kernel_on_numpy_and_under_jit_vmap_grad():
  rng = np.random.default_rng(3)
  q = rng.normal(0.001, 0.01, (4, 50))
  mean, std = q.mean(axis=1), q.std(axis=1, ddof=1)
  expected = mean / std * np.sqrt(PERIODS)
  on_numpy = metrics.sharpe_from_moments(mean, std)
  assert isinstance(on_numpy, np.ndarray) and on_numpy.dtype == np.float64
  np.testing.assert_array_equal(on_numpy, expected)  # float64 in, float64 arithmetic
  jitted = jax.jit(jax.vmap(metrics.sharpe_from_moments, in_axes=(0, 0, None)))
  np.testing.assert_allclose(jitted(jnp.asarray(mean), jnp.asarray(std), PERIODS), expected,
                             rtol=1e-5)
  slope = jax.grad(metrics.sharpe_from_moments)(jnp.float32(0.002), jnp.float32(0.01), 4.0)
  assert float(slope) == pytest.approx(2 / 0.01)
  # A flat series (std 0) is undefined: NaN, or what the caller asks for.
  assert np.isnan(metrics.sharpe_from_moments(0.001, 0.0))
  assert float(metrics.sharpe_from_moments(jnp.float32(0.001), jnp.float32(0.0),
                                           undefined=0.0)) == 0.0


def _returns_series():
  with jax.enable_x64(True):
    result, closes = random_backtest(num_bars=2000, seed=5, sizing='full')
    q = np.asarray(metrics.period_returns(result.equity, 100_000.0))
    got = {k: float(v) for k, v in metrics.compute_metrics(
        result, metrics.market_returns(jnp.asarray(closes)), 100_000.0).items()}
  market = np.concatenate([[0.0], closes[1:] / closes[:-1] - 1])
  return q, market, got


@pytest.mark.extra
def test_cross_check_with_empyrical():
  empyrical = pytest.importorskip('empyrical')
  q, market, got = _returns_series()
  kwargs = dict(period='daily', annualization=PERIODS)
  np.testing.assert_allclose(got['sharpe'], empyrical.sharpe_ratio(q, **kwargs), rtol=1e-9)
  np.testing.assert_allclose(got['sortino'], empyrical.sortino_ratio(q, **kwargs), rtol=1e-9)
  np.testing.assert_allclose(got['max_drawdown'], empyrical.max_drawdown(q), rtol=1e-9)
  np.testing.assert_allclose(got['cagr'], empyrical.cagr(q, **kwargs), rtol=1e-9)
  np.testing.assert_allclose(got['volatility'], empyrical.annual_volatility(q, **kwargs),
                             rtol=1e-9)
  np.testing.assert_allclose(got['var_95'], empyrical.value_at_risk(q), rtol=1e-9)
  np.testing.assert_allclose(got['cvar_95'], empyrical.conditional_value_at_risk(q), rtol=1e-9)
  np.testing.assert_allclose(got['beta'], empyrical.beta(q, market), rtol=1e-9)


@pytest.mark.extra
def test_cross_check_with_vectorbt():
  pytest.importorskip('vectorbt')
  q, _, got = _returns_series()
  accessor = pd.Series(q, index=pd.date_range('2020-01-01', periods=len(q), freq='h')).vbt.returns(
      freq='1h', year_freq=pd.Timedelta(hours=PERIODS))
  np.testing.assert_allclose(got['sharpe'], accessor.sharpe_ratio(), rtol=1e-9)
  np.testing.assert_allclose(got['sortino'], accessor.sortino_ratio(), rtol=1e-9)
  np.testing.assert_allclose(got['max_drawdown'], accessor.max_drawdown(), rtol=1e-9)
  np.testing.assert_allclose(got['cagr'], accessor.annualized(), rtol=1e-9)


def test_market_returns_start_at_zero():
  closes = np.array([100.0, 110.0, 99.0])
  np.testing.assert_allclose(metrics.market_returns(closes), [0.0, 0.1, -0.1], rtol=1e-6)


@pytest.mark.parametrize('fill', backtest.FILLS)
def test_gross_equity_is_the_same_fills_at_zero_cost(fill):
  rng = np.random.default_rng(4)
  closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
  opens = closes * np.exp(rng.normal(0, 0.002, 400))
  actions = rng.choice(3, 400, p=[0.2, 0.6, 0.2])
  params = backtest.make_params(commission=0.002, slippage=0.001, allow_short=True, fill=fill,
                                max_position_pct=0.5)
  with jax.enable_x64(True):
    result = backtest.run_backtest(backtest.Prices(opens, closes), actions, np.full(400, 0.8),
                                   params)
    gross = np.asarray(metrics.gross_equity(result))
  # Reference: replay the fills at the unslipped price without commission.
  ref = closes if fill == 'close' else opens
  qty = np.asarray(result.fill_qty)
  cash = 100_000.0 - np.cumsum(qty * ref)
  np.testing.assert_allclose(gross, cash + np.cumsum(qty) * closes, rtol=1e-9)
  assert np.sum(qty != 0) > 30 and gross[-1] > float(result.equity[-1])


def test_attribution_matches_the_metrics():
  with jax.enable_x64(True):
    result, closes = random_backtest(allow_short=True)
    values = metrics.attribution(result, 100_000.0)
    full = metrics.compute_metrics(result, metrics.market_returns(closes), 100_000.0)
    gross = np.asarray(metrics.gross_equity(result))
  assert set(values) == set(metrics.ATTRIBUTION_NAMES)
  n = len(closes)
  np.testing.assert_allclose(values['net_sharpe'], float(full['sharpe']), rtol=1e-9)
  np.testing.assert_allclose(values['net_total_return'], float(full['total_return']), rtol=1e-9)
  market = np.asarray(metrics.market_returns(closes))
  np.testing.assert_allclose(values['gross_sharpe'],
                             numpy_metrics(gross, 100_000.0, market)['sharpe'], rtol=1e-9)
  np.testing.assert_allclose(values['cost_drag_sharpe'],
                             values['gross_sharpe'] - values['net_sharpe'], rtol=1e-12)
  assert values['cost_drag_sharpe'] > 0
  np.testing.assert_allclose(values['commission'], float(full['total_commission']), rtol=1e-9)
  np.testing.assert_allclose(values['slippage_return'], float(full['total_slippage']) / 1e5,
                             rtol=1e-9)
  np.testing.assert_allclose(values['turnover_per_year'], float(full['turnover']) * 8760 / n,
                             rtol=1e-9)
  np.testing.assert_allclose(values['mean_holding_bars'], float(full['avg_holding_bars']),
                             rtol=1e-9)
  assert values['trade_bar_share'] == pytest.approx(float(full['trade_bar_share']))
  assert values['num_trades'] == int(full['num_trades'])
  # Without costs, gross is net.
  with jax.enable_x64(True):
    free, _ = random_backtest(allow_short=True, commission=0.0, slippage=0.0)
    values = metrics.attribution(free, 100_000.0)
  assert values['cost_drag_sharpe'] == 0.0 and values['commission'] == 0.0


def test_attribution_report_section():
  with jax.enable_x64(True):
    result, closes = random_backtest()
    values = metrics.attribution(result, 100_000.0)
    intervals = report.attribution_intervals(result, 100_000.0, num_resamples=200)
    curve = backtest.cost_sensitivity(backtest.Prices(closes, closes),
                                      np.where(np.arange(500) % 7 == 0, BUY, 1),
                                      np.full(500, 0.9), backtest.make_params())
  assert intervals['net_sharpe']['low'] <= values['net_sharpe'] <= intervals['net_sharpe']['high']
  lines = report.attribution_lines(values, intervals)
  assert len(lines) == 4 and f'{values["net_sharpe"]:+.2f}' in lines[2]
  assert f'mean holding {values["mean_holding_bars"]:.1f} bars' in lines[3]
  # Positions opened and never closed (a buy-and-hold) have no holding time to show.
  held = {**values, 'mean_holding_bars': float('nan')}
  assert report.attribution_lines(held)[3].endswith('no round trip closed (no holding time)')
  assert 'nan' not in report.attribution_html(held, plot=False)
  page = report.attribution_html(values, curve, intervals, plot=False)
  assert 'Where the returns go' in page and f'{values["gross_total_return"]:+.2%}' in page
  assert page.count('<tr>') == 1 + 4 + 1 + len(backtest.COST_MULTIPLIERS)
  assert list(curve['cost_multiplier']) == list(backtest.COST_MULTIPLIERS)
  assert curve['sharpe'].iloc[0] > curve['sharpe'].iloc[-1]
  if report.cost_sensitivity_png(curve) is not None:
    assert 'data:image/png;base64,' in report.attribution_html(values, curve)
