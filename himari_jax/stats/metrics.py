"""Performance metrics of a backtest (SPEC section 7), in jax.numpy so they vmap.

Conventions, for an equity curve `equity: (N,)` marked at each close and the starting capital:

* Period returns `q: (N,)`: `q_0 = equity_0 / capital - 1` (the first fill's costs), then
  `q_t = equity_t / equity_{t-1} - 1`. Market returns are close-to-close with `r_0 = 0`.
* Years are `N / periods_per_year`; standard deviations use `ddof = 1`; the risk-free rate
  is a simple annual rate, `risk_free_rate / periods_per_year` per bar. These match empyrical.
* Drawdown is `equity / running_max - 1` with the capital as the first peak.
* Ratios whose denominator is zero (Sharpe of a flat curve, win rate without round trips)
  are NaN; a profit factor without losing trips is inf.
* A round trip runs from the fill that opens a position (from flat, or the opening part of a
  long-short flip) to the fill that closes it; its profit is the change of cash between those
  points, so it includes every commission and slippage of its fills (a flip's costs are split
  in proportion to the units closed and opened). Trips still open at the end are not counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from himari_jax.constants import PERIODS_PER_YEAR

METRIC_NAMES = (
    'total_return', 'cagr', 'volatility', 'sharpe', 'sortino', 'max_drawdown', 'calmar',
    'var_95', 'cvar_95', 'beta', 'final_equity', 'num_trades', 'trade_bar_share', 'exposure',
    'turnover', 'total_commission', 'total_slippage', 'num_round_trips', 'win_rate',
    'profit_factor', 'avg_trade_profit', 'avg_holding_bars')
# What a screening sweep computes from running sums alone (`backtest.sweep(metrics='core')`).
CORE_METRIC_NAMES = (
    'total_return', 'cagr', 'volatility', 'sharpe', 'sortino', 'max_drawdown', 'calmar',
    'final_equity', 'num_trades', 'trade_bar_share')


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, NaN where den == 0 (no warning, no inf)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.nan)


def _namespace(*arrays: Any) -> Any:
  """jax.numpy when any of `arrays` is a JAX array (traced ones included), else numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def sharpe_from_moments(mean: Any, std: Any, periods_per_year: Any = PERIODS_PER_YEAR, *,
                        undefined: float = float('nan')) -> Any:
  """The one Sharpe kernel: `mean / std * sqrt(periods_per_year)`, `undefined` where std <= 0.

  Every Sharpe ratio of the package comes from here; callers pick the moments (ddof, excess
  over the risk-free rate, an epsilon under a differentiable loss). jax.numpy when `mean` or
  `std` is a JAX array (jit, vmap and grad apply), numpy otherwise (float64 stays float64).

  Args:
    mean: (...) mean (excess) return per period.
    std: (...) standard deviation of the returns per period; NaN gives `undefined`.
    periods_per_year: annualisation (1 gives the per-period ratio); may be traced.
    undefined: the value for a flat series (std 0): NaN, or 0 for a training log.

  Returns:
    (...) Sharpe ratios, the broadcast shape of `mean` and `std`.
  """
  xp = _namespace(mean, std)
  defined = std > 0
  ratio = xp.where(defined, mean / xp.where(defined, std, 1), undefined)
  return ratio * xp.sqrt(xp.asarray(periods_per_year, ratio.dtype))


def period_returns(equity: jax.Array, initial_capital: Any) -> jax.Array:
  """equity: (N,) -> (N,) simple returns, the first relative to the capital.

  JAX arrays in give a JAX array; numpy in gives numpy of the equity's dtype.
  """
  xp = _namespace(equity, initial_capital)
  previous = xp.concatenate([xp.reshape(initial_capital, (1,)).astype(equity.dtype),
                             equity[:-1]])
  return equity / previous - 1


def market_returns(close: jax.Array) -> jax.Array:
  """close: (N,) -> (N,) close-to-close returns, 0 for the first bar (the start)."""
  close = jnp.asarray(close)
  return jnp.concatenate([jnp.zeros((1,), close.dtype), close[1:] / close[:-1] - 1])


def drawdown_curve(equity: jax.Array, initial_capital: Any) -> jax.Array:
  """equity: (N,) -> (N,) `equity / running_max - 1` (<= 0), the capital being the first peak.

  JAX arrays in give a JAX array; numpy in gives numpy of the equity's dtype.
  """
  xp = _namespace(equity, initial_capital)
  running_max = jax.lax.cummax(equity) if xp is jnp else np.maximum.accumulate(equity)
  peak = xp.maximum(running_max, xp.asarray(initial_capital, equity.dtype))
  return equity / peak - 1


def _kth_smallest(x: jax.Array, k: int) -> jax.Array:
  """The k-th smallest (0-based) of x: (N,), exactly, by a bitwise search over float bits.

  One counting pass per bit of the dtype: vectorises far better than a sort or top_k on CPU.
  """
  uint = {4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
  bits = 8 * x.dtype.itemsize
  sign = uint(1) << uint(bits - 1)
  # Map float bit patterns to unsigned ints of the same order (negatives reversed).
  def to_float(key):
    return jax.lax.bitcast_convert_type(jnp.where(key & sign, key ^ sign, ~key), x.dtype)

  def try_bit(i, key):
    trial = key | (uint(1) << (bits - 1 - i).astype(uint))
    # Counting in the float dtype vectorises better than in int32; exact below 2**24 bars.
    below = jnp.sum((x < to_float(trial)).astype(x.dtype))
    return jnp.where(below <= k, trial, key)

  return to_float(jax.lax.fori_loop(0, bits, try_bit, uint(0)))


def value_at_risk(returns: jax.Array, level: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """(VaR, CVaR) of `returns: (N,)`: the (1 - level) percentile (linear interpolation, as
  numpy's default) and the mean of the returns at or below it."""
  n = returns.shape[0]
  position = (1 - level) * (n - 1)
  k = int(position)
  lower = _kth_smallest(returns, k)
  # The next order statistic: `lower` again if it is repeated, else the least value above it.
  repeated = jnp.sum(returns <= lower) > k + 1
  upper = jnp.where(repeated | (k + 1 >= n), lower,
                    jnp.min(jnp.where(returns > lower, returns, jnp.inf)))
  var = lower + (position - k) * (upper - lower)
  tail = returns <= var
  cvar = jnp.sum(jnp.where(tail, returns, 0)) / jnp.sum(tail)
  return var, cvar


class TradeStats(NamedTuple):
  """Running totals over the bars of a backtest, updated bar by bar (scalars, or batched).

  peak and max_drawdown: of the equity curve; num_trades: fills; bars_in_market: bars that
  end with a position; notional, commission, slippage: traded totals in currency;
  entry_value, entry_bar: cash and bar where the open round trip started; num_round_trips,
  wins, gross_profit, gross_loss, holding_bars: over closed round trips.
  """

  peak: jax.Array
  max_drawdown: jax.Array
  num_trades: jax.Array
  bars_in_market: jax.Array
  notional: jax.Array
  commission: jax.Array
  slippage: jax.Array
  entry_value: jax.Array
  entry_bar: jax.Array
  num_round_trips: jax.Array
  wins: jax.Array
  gross_profit: jax.Array
  gross_loss: jax.Array
  holding_bars: jax.Array


def init_trade_stats(initial_capital: Any) -> TradeStats:
  """Totals before bar 0; the capital is the first equity peak."""
  capital = jnp.asarray(initial_capital, jnp.result_type(float))
  zero, count = jnp.zeros_like(capital), jnp.zeros(capital.shape, jnp.int32)
  return TradeStats(
      peak=capital, max_drawdown=zero, num_trades=count, bars_in_market=count,
      notional=zero, commission=zero, slippage=zero, entry_value=capital, entry_bar=count,
      num_round_trips=count, wins=count, gross_profit=zero, gross_loss=zero,
      holding_bars=count)


def update_trade_stats(stats: TradeStats, bar: jax.Array, prev_position: jax.Array,
                       prev_cash: jax.Array, fill_qty: jax.Array, fill_price: jax.Array,
                       commission: jax.Array, slippage: jax.Array, position: jax.Array,
                       cash: jax.Array, equity: jax.Array) -> TradeStats:
  """Adds bar `bar` (its index) of a backtest; arguments as in BacktestResult, with the
  position and cash before the bar's fill. Runs inside the backtest's scan during a sweep."""
  peak = jnp.maximum(stats.peak, equity)
  traded = fill_qty != 0
  flips = jnp.sign(position) != jnp.sign(prev_position)
  closed = traded & flips & (prev_position != 0)
  opened = traded & flips & (position != 0)
  # Cash once the closing part of the fill is done: where one trip ends and the next starts.
  closing_share = jnp.abs(prev_position) / jnp.where(closed, jnp.abs(fill_qty), 1)
  boundary = jnp.where(closed, prev_cash + closing_share * (cash - prev_cash), prev_cash)
  profit = jnp.where(closed, boundary - stats.entry_value, 0)
  return TradeStats(
      peak=peak,
      max_drawdown=jnp.minimum(stats.max_drawdown, equity / peak - 1),
      num_trades=stats.num_trades + traded,
      bars_in_market=stats.bars_in_market + (position != 0),
      notional=stats.notional + jnp.abs(fill_qty) * fill_price,
      commission=stats.commission + commission,
      slippage=stats.slippage + slippage,
      entry_value=jnp.where(opened, boundary, stats.entry_value),
      entry_bar=jnp.where(opened, bar, stats.entry_bar),
      num_round_trips=stats.num_round_trips + closed,
      wins=stats.wins + (profit > 0),
      gross_profit=stats.gross_profit + jnp.maximum(profit, 0),
      gross_loss=stats.gross_loss - jnp.minimum(profit, 0),
      holding_bars=stats.holding_bars + jnp.where(closed, bar - stats.entry_bar, 0))


def trade_stats(result: Any, initial_capital: Any) -> TradeStats:
  """TradeStats of a finished backtest: `update_trade_stats` scanned over its (N,) arrays."""
  n = result.position.shape[0]
  prev_position = jnp.concatenate([jnp.zeros((1,), result.position.dtype), result.position[:-1]])
  prev_cash = jnp.concatenate(
      [jnp.reshape(initial_capital, (1,)).astype(result.cash.dtype), result.cash[:-1]])

  def step(stats, bar):
    return update_trade_stats(stats, *bar), None

  bars = (jnp.arange(n, dtype=jnp.int32), prev_position, prev_cash, result.fill_qty,
          result.fill_price, result.commission, result.slippage, result.position, result.cash,
          result.equity)
  return jax.lax.scan(step, init_trade_stats(initial_capital), bars)[0]


def summarize(stats: TradeStats, equity: jax.Array, market: jax.Array, initial_capital: Any,
              *, periods_per_year: float = PERIODS_PER_YEAR,
              risk_free_rate: float = 0.0) -> dict[str, jax.Array]:
  """Every SPEC section 7 metric (keys: `METRIC_NAMES`) from the equity curve and totals.

  Args:
    stats: TradeStats after the last bar.
    equity: (N,) equity at each close.
    market: (N,) market returns from `market_returns(close)`, for beta.
    initial_capital: scalar starting capital.
    periods_per_year: bars per year (default: hourly bars).
    risk_free_rate: simple annual rate.

  Returns:
    Scalars: returns and ratios as fractions, `final_equity`, `total_commission`,
    `total_slippage` and `avg_trade_profit` in currency, `avg_holding_bars` in bars,
    `turnover` as traded notional over mean equity.
  """
  dtype = equity.dtype
  capital = jnp.asarray(initial_capital, dtype)
  n = equity.shape[0]
  q = period_returns(equity, capital)
  excess = q - risk_free_rate / periods_per_year
  std = jnp.std(q, ddof=1) if n > 1 else jnp.asarray(jnp.nan, dtype)
  var, cvar = value_at_risk(q)
  market = jnp.asarray(market, dtype)
  market_centred = market - jnp.mean(market)
  beta = _safe_div(jnp.sum((q - jnp.mean(q)) * market_centred), jnp.sum(market_centred ** 2))
  num_trips = stats.num_round_trips
  loss = stats.gross_loss
  profit_factor = jnp.where(loss > 0, stats.gross_profit / jnp.where(loss > 0, loss, 1),
                            jnp.where(stats.gross_profit > 0, jnp.inf, jnp.nan))
  values = {
      **_return_metrics(equity[-1], capital, jnp.mean(excess), std,
                        jnp.sqrt(jnp.mean(jnp.minimum(excess, 0) ** 2)), stats.max_drawdown,
                        stats.num_trades, n, periods_per_year),
      'var_95': var,
      'cvar_95': cvar,
      'beta': beta,
      'exposure': stats.bars_in_market.astype(dtype) / n,
      'turnover': stats.notional / jnp.mean(equity),
      'total_commission': stats.commission,
      'total_slippage': stats.slippage,
      'num_round_trips': num_trips,
      'win_rate': _safe_div(stats.wins.astype(dtype), num_trips),
      'profit_factor': profit_factor,
      'avg_trade_profit': _safe_div(stats.gross_profit - loss, num_trips),
      'avg_holding_bars': _safe_div(stats.holding_bars.astype(dtype), num_trips),
  }
  return {name: values[name] for name in METRIC_NAMES}


def _return_metrics(final_equity: jax.Array, capital: jax.Array, mean_excess: jax.Array,
                    std: jax.Array, downside_deviation: jax.Array, max_drawdown: jax.Array,
                    num_trades: jax.Array, num_bars: int,
                    periods_per_year: float) -> dict[str, jax.Array]:
  """The metrics of CORE_METRIC_NAMES from the final equity and return statistics."""
  growth = final_equity / capital
  ann = jnp.sqrt(jnp.asarray(periods_per_year, growth.dtype))
  cagr = growth ** (periods_per_year / num_bars) - 1
  return {
      'total_return': growth - 1,
      'cagr': cagr,
      'volatility': std * ann,
      'sharpe': sharpe_from_moments(mean_excess, std, periods_per_year),
      'sortino': _safe_div(mean_excess, downside_deviation) * ann,
      'max_drawdown': max_drawdown,
      'calmar': _safe_div(cagr, jnp.abs(max_drawdown)),
      'final_equity': final_equity,
      'num_trades': num_trades,
      'trade_bar_share': num_trades.astype(growth.dtype) / num_bars,
  }


class CoreStats(NamedTuple):
  """Running sums for CORE_METRIC_NAMES, updated bar by bar inside a sweep's scan.

  peak and max_drawdown: of the equity curve; returns, squares: sums of the period returns
  and their squares; downside: sum of min(excess return, 0)**2; num_trades: fills. (The
  final equity comes from the scan's final state: every carry costs a kernel per bar.)
  """

  peak: jax.Array
  max_drawdown: jax.Array
  returns: jax.Array
  squares: jax.Array
  downside: jax.Array
  num_trades: jax.Array


def init_core_stats(initial_capital: Any) -> CoreStats:
  """Sums before bar 0; the capital is the first equity peak."""
  capital = jnp.asarray(initial_capital, jnp.result_type(float))
  zero = jnp.zeros_like(capital)
  return CoreStats(peak=capital, max_drawdown=zero, returns=zero, squares=zero,
                   downside=zero, num_trades=jnp.zeros(capital.shape, jnp.int32))


def update_core_stats(stats: CoreStats, counts: jax.Array, prev_equity: jax.Array,
                      equity: jax.Array, traded: jax.Array,
                      risk_free_per_bar: Any) -> CoreStats:
  """Adds one bar (when `counts`): its equity, the equity before it, whether it filled."""
  q = jnp.where(counts, equity / prev_equity - 1, 0)
  peak = jnp.maximum(stats.peak, equity)
  return CoreStats(
      peak=peak,
      max_drawdown=jnp.minimum(stats.max_drawdown, equity / peak - 1),
      returns=stats.returns + q, squares=stats.squares + q * q,
      downside=stats.downside + jnp.where(counts, jnp.minimum(q - risk_free_per_bar, 0) ** 2, 0),
      num_trades=stats.num_trades + traded)


def summarize_core(stats: CoreStats, final_equity: jax.Array, num_bars: int,
                   initial_capital: Any, *, periods_per_year: float = PERIODS_PER_YEAR,
                   risk_free_rate: float = 0.0) -> dict[str, jax.Array]:
  """CORE_METRIC_NAMES from the running sums and equity after the last of `num_bars` bars.

  The variance comes from sums of returns and squares: in float32 (the default) expect
  about 1e-5 relative difference from `compute_metrics`, exact in float64.
  """
  dtype = final_equity.dtype
  n = num_bars
  mean = stats.returns / n
  if n > 1:
    std = jnp.sqrt(jnp.maximum(stats.squares - n * mean * mean, 0) / (n - 1))
  else:
    std = jnp.full_like(mean, jnp.nan)
  return _return_metrics(final_equity, jnp.asarray(initial_capital, dtype),
                         mean - risk_free_rate / periods_per_year, std,
                         jnp.sqrt(stats.downside / n), stats.max_drawdown, stats.num_trades,
                         n, periods_per_year)


@jax.jit
def compute_metrics(result: Any, market: jax.Array, initial_capital: Any, *,
                    periods_per_year: float = PERIODS_PER_YEAR,
                    risk_free_rate: float = 0.0) -> dict[str, jax.Array]:
  """Every SPEC section 7 metric of a backtest.BacktestResult of (N,) arrays (see `summarize`).

  Pure jax.numpy: jit- and vmap-able over results, capitals and markets.
  """
  return summarize(trade_stats(result, initial_capital), result.equity, market, initial_capital,
                   periods_per_year=periods_per_year, risk_free_rate=risk_free_rate)


ATTRIBUTION_NAMES = (
    'gross_total_return', 'gross_sharpe', 'commission', 'slippage', 'net_total_return',
    'net_sharpe', 'cost_drag_sharpe', 'commission_return', 'slippage_return',
    'turnover_per_year', 'mean_holding_bars', 'trade_bar_share', 'num_trades')


def gross_equity(result: Any) -> jax.Array:
  """(N,) equity of the same fills at zero commission and slippage.

  A fill's slippage (currency) is exactly what its slipped price cost over the reference
  price, so the cost-free cash is the booked cash plus every cost paid so far.
  """
  return result.equity + jnp.cumsum(result.commission + result.slippage)


def attribution(result: Any, initial_capital: Any, *, periods_per_year: float = PERIODS_PER_YEAR,
                risk_free_rate: float = 0.0) -> dict[str, float]:
  """Where the returns of one backtest go (SPEC section 9): gross, costs, net.

  Args:
    result: backtest.BacktestResult of (N,) arrays (from run_backtest or policy.run_policy).
    initial_capital: its starting capital.

  Returns:
    Floats (keys `ATTRIBUTION_NAMES`): `gross_*` from `gross_equity` (the same fills at zero
    cost), `net_*` from the booked equity; `commission`, `slippage` in currency and
    `*_return` as fractions of the capital; `cost_drag_sharpe` = gross Sharpe - net Sharpe;
    `turnover_per_year` = traded notional / mean equity, annualised; `mean_holding_bars` of
    closed round trips (NaN without any); `trade_bar_share`: bars with a fill / bars.
  """
  capital = float(np.asarray(initial_capital))
  n = int(np.shape(result.equity)[0])

  def sharpe(equity):
    q = period_returns(np.asarray(equity, np.float64), capital)
    std = np.std(q, ddof=1) if n > 1 else np.nan
    mean = np.mean(q) - risk_free_rate / periods_per_year
    return float(sharpe_from_moments(mean, std, periods_per_year))

  gross = np.asarray(gross_equity(result), np.float64)
  net = np.asarray(result.equity, np.float64)
  qty = np.asarray(result.fill_qty, np.float64)
  notional = np.sum(np.abs(qty) * np.asarray(result.fill_price, np.float64))
  commission = float(np.sum(np.asarray(result.commission, np.float64)))
  slippage = float(np.sum(np.asarray(result.slippage, np.float64)))
  stats = trade_stats(result, initial_capital)
  trips = int(stats.num_round_trips)
  values = {
      'gross_total_return': gross[-1] / capital - 1, 'gross_sharpe': sharpe(gross),
      'commission': commission, 'slippage': slippage,
      'net_total_return': net[-1] / capital - 1, 'net_sharpe': sharpe(net),
      'commission_return': commission / capital, 'slippage_return': slippage / capital,
      'turnover_per_year': notional / np.mean(net) * periods_per_year / n,
      'mean_holding_bars': float(stats.holding_bars) / trips if trips else float('nan'),
      'trade_bar_share': float(np.mean(qty != 0)), 'num_trades': int(np.sum(qty != 0)),
  }
  values['cost_drag_sharpe'] = values['gross_sharpe'] - values['net_sharpe']
  return {name: (values[name] if name == 'num_trades' else float(values[name]))
          for name in ATTRIBUTION_NAMES}
