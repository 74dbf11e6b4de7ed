"""Portfolio backtests over a panel against float64 per-bar loops, and their causality."""

import math

import jax
import numpy as np
import pytest

from himari_jax.backtest import engine
from himari_jax.backtest import portfolio as pf

BARS, ASSETS = 48, 5


def _random_panel(seed=0):
  """Random-walk coins: one listed at bar 10, one with a 3-bar gap, one halted on zero-volume
  bars (prices kept, unavailable), one that ends at bar 40."""
  rng = np.random.default_rng(seed)
  close = 100 * np.exp(np.cumsum(0.02 * rng.normal(size=(BARS, ASSETS)), axis=0))
  opens = close * np.exp(0.005 * rng.normal(size=(BARS, ASSETS)))
  available = np.ones((BARS, ASSETS), bool)
  available[:10, 1] = False
  available[20:23, 2] = False
  available[[15, 16, 30], 3] = False
  available[40:, 4] = False
  missing = ~available
  missing[[15, 16, 30], 3] = False  # halted: a flat placeholder bar at the previous close
  close[[15, 16, 30], 3] = close[[14, 15, 29], 3]
  close[missing] = np.nan
  opens[missing] = np.nan
  return pf.PanelPrices(opens, close, available)


def _loop_portfolio(prices, targets, *, capital=100_000.0, commission=0.001, slippage=0.0005,
                    commission_sell=0.002, slippage_sell=0.001, next_open=False,
                    short_rate=0.0, band=0.0, trim=True, sleeves=False, periods=8760.0):
  """The semantics of the module docstring, one coin and one bar at a time, in float64."""
  opens, close, available = (np.asarray(x) for x in prices)
  cash = [capital / ASSETS] * ASSETS
  pos = [0.0] * ASSETS
  last = [0.0] * ASSETS
  equity, costs, positions = [], [], []
  for t in range(BARS):
    refs, weights, tradable = [], [], []
    for a in range(ASSETS):
      price = opens[t, a] if next_open else close[t, a]
      refs.append(price if math.isfinite(price) else last[a])
      if next_open:
        weights.append(targets[t - 1, a] if t else math.nan)
        tradable.append(bool(available[t, a] and t and available[t - 1, a]))
      else:
        weights.append(targets[t, a])
        tradable.append(bool(available[t, a]))
    sleeve = [cash[a] + pos[a] * refs[a] for a in range(ASSETS)]
    orders = []
    for a in range(ASSETS):
      size_from = sleeve[a] if sleeves else sum(sleeve)
      w, r, q = weights[a], refs[a], 0.0
      if tradable[a] and not math.isnan(w):
        value = w * size_from
        if value / r > pos[a]:
          q = max(value / (r * (1 + slippage) * (1 + commission)) - pos[a], 0.0)
        elif value / r < pos[a]:
          q = min(value / (r * (1 - slippage_sell)) - pos[a], 0.0)
        exit_or_flip = pos[a] != 0 and w * pos[a] <= 0
        if w * pos[a] > 0 and q * pos[a] < 0 and not trim:
          q = 0.0
        if not exit_or_flip and abs(q) * r <= band * size_from:
          q = 0.0
      orders.append(q)
    bar_cost = 0.0
    for a, q in enumerate(orders):
      if q > 0:
        price = refs[a] * (1 + slippage)
        fee, slip = q * price * commission, q * refs[a] * slippage
      elif q < 0:
        price = refs[a] * (1 - slippage_sell)
        fee, slip = -q * price * commission_sell, -q * refs[a] * slippage_sell
      else:
        price = fee = slip = 0.0
      cash[a] -= q * price + fee
      pos[a] += q
      if math.isfinite(close[t, a]):
        last[a] = close[t, a]
      borrow = short_rate / periods * max(-pos[a], 0.0) * last[a]
      cash[a] -= borrow
      bar_cost += fee + slip + borrow
    equity.append(sum(cash[a] + pos[a] * last[a] for a in range(ASSETS)))
    costs.append(bar_cost)
    positions.append(list(pos))
  return np.array(equity), np.array(costs), np.array(positions)


def _loop_books(score, available, k, every, band, long_short):
  """The book selection of `rank_targets`, coin by coin."""
  longs, shorts = set(), set()
  weights = np.full(score.shape, np.nan)
  per_coin = 1.0 / (2 * k if long_short else k)
  for t in range(score.shape[0]):
    if t % every:
      continue
    avail = available[t]
    valid = [a for a in range(ASSETS) if avail[a] and np.isfinite(score[t, a])]
    by_best = sorted(valid, key=lambda a: (-score[t, a], a))
    best = {a: i for i, a in enumerate(by_best)}
    worst = {a: len(valid) - 1 - best[a] for a in valid}
    kept_long = {a for a in longs if not avail[a] or (a in best and best[a] < k + band)}
    kept_short = {a for a in shorts if not avail[a] or (a in worst and worst[a] < k + band)}
    free = [a for a in by_best if a not in kept_long | kept_short]
    longs = kept_long | set(free[:k - len(kept_long)])
    if long_short:
      free = [a for a in sorted(valid, key=lambda a: worst[a]) if a not in longs | kept_short]
      shorts = kept_short | set(free[:k - len(kept_short)])
    for a in range(ASSETS):
      if avail[a]:
        weights[t, a] = per_coin if a in longs else -per_coin if a in shorts else 0.0
  return weights


def _params(**overrides):
  settings = dict(commission=0.001, slippage=0.0005, commission_sell=0.002, slippage_sell=0.001)
  settings.update(overrides)
  return pf.make_portfolio_params(**settings)


def _check_against_loop(prices, targets, result, **loop_settings):
  equity, costs, positions = _loop_portfolio(prices, targets, **loop_settings)
  np.testing.assert_allclose(result.equity, equity, rtol=1e-9)
  np.testing.assert_allclose(result.gross_equity - result.equity, np.cumsum(costs),
                             rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(result.position, positions, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('fill', ['close', 'next_open'])
def test_per_coin_timing_matches_loop(fill):
  prices = _random_panel(1)
  rng = np.random.default_rng(2)
  actions = rng.choice(3, size=(BARS, ASSETS), p=[0.25, 0.45, 0.3])
  targets = pf.targets_from_actions(actions, rng.uniform(0.3, 1.0, (BARS, ASSETS)),
                                    max_position_pct=0.8, allow_short=True)
  with jax.enable_x64(True):
    result = pf.timing_portfolio(prices, targets, _params(fill=fill, trim=False,
                                                          short_rate=0.2))
    _check_against_loop(prices, targets, result, next_open=fill == 'next_open', trim=False,
                        short_rate=0.2, sleeves=True)
  assert np.count_nonzero(result.fill_qty) > 30
  assert (np.asarray(result.position) < 0).any() and np.asarray(result.borrow).sum() > 0
  # No fill where a coin cannot trade; a coin held through its gap keeps its position.
  assert not np.asarray(result.fill_qty)[~prices.available].any()


def test_top_k_long_only_matches_loop():
  prices = _random_panel(3)
  rng = np.random.default_rng(4)
  score = rng.normal(size=(BARS, ASSETS))
  score[5, 0] = np.nan
  with jax.enable_x64(True):
    targets = pf.rank_targets(score, prices.available, k=2, rebalance_every=3, band=1)
    np.testing.assert_array_equal(targets, _loop_books(score, prices.available, 2, 3, 1, False))
    result = pf.top_k_portfolio(prices, score, _params(fill='next_open', trade_band=0.01), k=2,
                                rebalance_every=3, band=1)
    _check_against_loop(prices, targets, result, next_open=True, band=0.01)
  position = np.asarray(result.position)
  assert (position >= 0).all() and (np.count_nonzero(position, axis=1)[3:] <= 3).all()
  assert np.nanmax(np.nansum(targets, axis=1)) == pytest.approx(1.0)


def test_long_short_matches_loop():
  prices = _random_panel(5)
  rng = np.random.default_rng(6)
  score = rng.normal(size=(BARS, ASSETS))
  with jax.enable_x64(True):
    targets = pf.rank_targets(score, prices.available, k=2, rebalance_every=2, band=1,
                              long_short=True)
    np.testing.assert_array_equal(targets, _loop_books(score, prices.available, 2, 2, 1, True))
    params = _params(short_rate=0.5, trade_band=0.005)
    result = pf.long_short_portfolio(prices, score, params, k=2, rebalance_every=2, band=1)
    _check_against_loop(prices, targets, result, short_rate=0.5, band=0.005)
    summary = pf.summarize_portfolio(result, params)
  # Dollar-neutral at every rebalance where both books are full and tradable.
  full = np.flatnonzero((np.nansum(targets > 0, axis=1) == 2) & (np.nansum(targets < 0, axis=1)
                                                                  == 2))
  value = np.asarray(result.position) * np.asarray(prices.close)
  np.testing.assert_allclose(np.nansum(value[full], axis=1), 0.0,
                             atol=0.01 * float(result.equity[0]))
  assert summary['borrow'] > 0 and summary['net_sharpe'] < summary['gross_sharpe']
  costs = summary['commission'] + summary['slippage'] + summary['borrow']
  assert float(result.gross_equity[-1] - result.equity[-1]) == pytest.approx(costs)


def test_decisions_use_bars_up_to_t_only():
  prices = _random_panel(7)
  rng = np.random.default_rng(8)
  score = rng.normal(size=(BARS, ASSETS))
  cut = 25
  later = _random_panel(9)
  perturbed = pf.PanelPrices(
      *(np.concatenate([np.asarray(x)[:cut + 1], np.asarray(y)[cut + 1:]])
        for x, y in zip(prices, later, strict=True)))
  other_score = np.concatenate([score[:cut + 1], rng.normal(size=(BARS - cut - 1, ASSETS))])
  for fill in engine.FILLS:
    params = _params(fill=fill, short_rate=0.1)
    runs = [pf.long_short_portfolio(p, s, params, k=2, rebalance_every=2, band=1)
            for p, s in ((prices, score), (perturbed, other_score))]
    for field in ('equity', 'gross_equity', 'position', 'fill_qty', 'cash'):
      a, b = (np.asarray(getattr(r, field))[:cut + 1] for r in runs)
      np.testing.assert_array_equal(a, b, err_msg=f'{fill}: {field}')
    assert not np.array_equal(runs[0].equity, runs[1].equity)


def test_buy_and_hold_benchmarks():
  prices = _random_panel(10)
  params = _params()
  with jax.enable_x64(True):
    # One coin: the single-asset engine's buy-and-hold, equity for equity.
    first = 10
    targets = pf.benchmark_targets(prices.available, column=1)
    assert np.flatnonzero(np.isfinite(targets)).tolist() == [first * ASSETS + 1]
    result = pf.run_portfolio(prices, targets, params)
    single = engine.buy_and_hold(
        engine.Prices(prices.open[first:, 1], prices.close[first:, 1]),
        engine.make_params(commission=0.001, slippage=0.0005, commission_sell=0.002,
                           slippage_sell=0.001, initial_capital=100_000.0, sizing='full'))
    np.testing.assert_allclose(result.equity[first:], single.equity, rtol=1e-12)
    # Equal weight of the available coins, rebalanced every 12 bars.
    ew = pf.benchmark_targets(prices.available, rebalance_every=12)
    assert np.nansum(ew[0]) == pytest.approx(1.0) and np.isnan(ew[0, 1])
    ew_result = pf.run_portfolio(prices, ew, params)
    _check_against_loop(prices, ew, ew_result)
  assert np.count_nonzero(np.asarray(ew_result.fill_qty)[12]) >= 4


def test_clear_errors():
  prices = _random_panel(0)
  bad = pf.PanelPrices(prices.open, prices.close.copy(), prices.available)
  bad.close[3, 0] = np.nan
  with pytest.raises(ValueError, match='bar 3, asset 0 is available but its close is nan'):
    pf.run_portfolio(bad, np.zeros((BARS, ASSETS)), _params())
  with pytest.raises(ValueError, match='targets must have the shape'):
    pf.run_portfolio(prices, np.zeros((BARS, 2)), _params())
  with pytest.raises(ValueError, match='short_rate must be finite and >= 0'):
    pf.make_portfolio_params(short_rate=-0.1)


def test_band_skips_small_orders_but_never_exits_or_flips():
  prices = _random_panel(11)
  targets = np.full((BARS, ASSETS), np.nan)
  targets[0, 0] = 0.02  # entry, above the band
  targets[2, 0] = 0.025  # a raise of 0.005 < band 0.01: skipped
  targets[4, 0] = 0.005  # a cut of 0.015: trades
  targets[6, 0] = 0.0  # an exit of 0.005 < band: trades all the same
  targets[8, 0] = 0.004  # an entry below the band: skipped
  targets[8, 2] = 0.02
  targets[10, 2] = -0.005  # a flip to a short smaller than the band: trades
  with jax.enable_x64(True):
    result = pf.run_portfolio(prices, targets, _params(trade_band=0.01))
    _check_against_loop(prices, targets, result, band=0.01)
  traded = np.flatnonzero(np.asarray(result.fill_qty)[:, 0]).tolist()
  assert traded == [0, 4, 6]
  assert float(result.position[6, 0]) == 0.0 and float(result.position[10, 2]) < 0


def test_many_rotated_books_in_one_call_match_each_book_run_alone():
  """`rank_portfolio_returns` (vmapped over scores) gives each long-short book's returns as
  `long_short_portfolio` does, at 1e-9 in float64; a rotation shifts every coin's score by the
  same bars."""
  prices = _random_panel(7)
  score = np.random.default_rng(8).normal(size=(BARS, ASSETS))
  rotated = pf.rotated_scores(score, [0, 5, 17])
  np.testing.assert_array_equal(rotated[1][5:], score[:-5])
  params = _params(short_rate=0.1)
  with jax.enable_x64(True):
    batch = pf.rank_portfolio_returns(prices, rotated, params, k=2, rebalance_every=3, band=1)
    for r in range(3):
      alone = pf.long_short_portfolio(prices, rotated[r], params, k=2, rebalance_every=3, band=1)
      equity = np.asarray(alone.equity, np.float64)
      expected = equity / np.concatenate([[100_000.0], equity[:-1]]) - 1
      np.testing.assert_allclose(batch[r], expected, rtol=0, atol=1e-9)
  assert not np.allclose(batch[0], batch[1])
  with pytest.raises(ValueError, match='R, bars, assets'):
    pf.rank_portfolio_returns(prices, score, params, k=2)


def test_sleeve_returns_compound_to_each_sleeve_and_skip_unavailable_bars():
  prices = _random_panel(9)
  rng = np.random.default_rng(10)
  targets = pf.targets_from_actions(rng.choice(3, size=(BARS, ASSETS)), sizing='fixed',
                                    max_position_pct=1.0)
  params = _params()
  with jax.enable_x64(True):
    result = pf.timing_portfolio(prices, targets, params)
  returns = pf.sleeve_returns(result, params, prices.available)
  assert np.isnan(returns[~prices.available]).all()
  assert np.isfinite(returns[prices.available]).all()
  sleeve = np.asarray(result.sleeve_equity, np.float64)
  # Coin 0 is always available: its returns compound to its sleeve's equity.
  np.testing.assert_allclose(np.prod(1 + returns[:, 0]) * 100_000.0 / ASSETS, sleeve[-1, 0],
                             rtol=1e-9)
