"""Portfolios over a panel of coins, net of costs (SPEC sections 6 and 12).

One `jax.lax.scan` over bars carries cash and the position of every coin; within a bar the
order of each coin is one function `jax.vmap`ped over the coins, so a whole portfolio of any
number of coins is one compiled call. Portfolios differ only in their target weights:

* `timing_portfolio`: each coin timed by its own targets (e.g. `targets_from_actions` of the
  seed rule) with equal capital per coin: coin a is a sleeve with `capital / assets` of cash
  and sizes from its own equity; the sleeves are summed.
* `top_k_portfolio`: long the k best-scored coins; `long_short_portfolio`: long the k best and
  short the k worst, dollar-neutral. Books are chosen every `rebalance_every` bars
  (`rank_targets`), with a hysteresis `band`: a held coin stays while its rank is within k +
  band, and free slots go to the best-ranked coins not held.
* `benchmark_targets`: equal weight of the available coins, and buy-and-hold of one coin.

Semantics, with `targets: (bars, assets)` the weight decided at the close of bar t from bars
<= t (a signed fraction of the sizing equity; NaN = keep the position):

* Fills as the single-asset engine's (`engine.py`): at the close of bar t (`fill='close'`) or
  the open of bar t+1 (`'next_open'`); buys pay `ref * (1 + slippage_buy)`, sells receive
  `ref * (1 - slippage_sell)`, commission is a fraction of the traded notional, slippage is
  reported in currency as `|qty| * ref * slippage`; each side has its own rates.
* A coin trades only at a fill bar where it is available, on a decision from a bar where it
  was available; otherwise the order is dropped (the next decision may place it again).
  A held coin that becomes unavailable (a gap, a halt) is held and marked at its last known
  price until it trades again.
* Sizing equity E: the sleeve's (timing) or the whole portfolio's (cross-sectional) cash plus
  positions marked just before the fill (at `ref` where the coin has a price, else its last
  price). A buy goes to `w E / (ref (1 + slippage_buy) (1 + commission_buy))` units (so a full
  long spends exactly E, commission included), a sell to `w E / (ref (1 - slippage_sell))`.
  Orders of one bar are sized together, so cash may dip below zero by a rebalance's costs;
  that is not charged. Short proceeds go to cash; margin is not modelled.
* `trade_band`: an order worth at most `trade_band * E` is skipped, unless it exits (w = 0)
  or flips the side. `trim=False` (the seed's "a BUY never reduces a larger position"): a
  target on the side already held never reduces the position, it only raises it.
* Shorting cost: `short_rate / periods_per_year` of the short notional (units x the close
  mark) charged to cash at every close.
* Equity: cash plus every position marked at its last close, at every close. Gross equity
  adds back every commission, slippage and shorting cost paid so far (the same fills at zero
  cost, SPEC section 9).

Everything runs in the default float dtype; under `with jax.enable_x64():` it is float64.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from himari_jax.backtest import engine
from himari_jax.constants import BUY, PERIODS_PER_YEAR, SELL
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import significance

SUMMARY_NAMES = (
    'net_total_return', 'gross_total_return', 'net_sharpe', 'gross_sharpe', 'cost_drag_sharpe',
    'commission', 'slippage', 'borrow', 'cost_return', 'turnover_per_year', 'mean_exposure',
    'num_fills')


class PanelPrices(NamedTuple):
  """What a portfolio needs of a panel, each (bars, assets): open and close (NaN where a coin
  has no bar) and `available` (bool). A `data.universe.Panel` has these attributes."""

  open: Any
  close: Any
  available: Any


@flax.struct.dataclass
class PortfolioParams:
  """Portfolio settings, a pytree of scalars; build with `make_portfolio_params`."""

  initial_capital: Any
  commission_buy: Any
  commission_sell: Any
  slippage_buy: Any
  slippage_sell: Any
  fill_next_open: Any
  short_rate: Any
  trade_band: Any
  trim: Any
  periods_per_year: Any


@flax.struct.dataclass
class PortfolioResult:
  """Per-bar record of a portfolio backtest.

  equity, gross_equity, cash, borrow, exposure: (bars,); borrow is the shorting cost charged
  at the bar's close, exposure the sum of |position value| at the close.
  fill_qty (signed units, 0 = no fill), fill_price (0 without a fill), commission, slippage
  (currency), position (units after the fill), sleeve_equity (each coin's cash and position
  marked at the close; with one cash account its cash is the cash flow the coin caused):
  (bars, assets).
  """

  equity: jax.Array
  gross_equity: jax.Array
  cash: jax.Array
  borrow: jax.Array
  exposure: jax.Array
  fill_qty: jax.Array
  fill_price: jax.Array
  commission: jax.Array
  slippage: jax.Array
  position: jax.Array
  sleeve_equity: jax.Array


def make_portfolio_params(*, initial_capital: float = 100_000.0, commission: float = 0.001,
                          slippage: float = 0.0005, commission_sell: float | None = None,
                          slippage_sell: float | None = None, fill: str = 'close',
                          short_rate: float = 0.0, trade_band: float = 0.0, trim: bool = True,
                          periods_per_year: float = PERIODS_PER_YEAR) -> PortfolioParams:
  """Validated `PortfolioParams`; `*_sell=None` uses the buy-side rate; `short_rate` is an
  annual rate on short notional.

  Raises:
    ValueError: naming the offending setting.
  """
  if fill not in engine.FILLS:
    raise ValueError(f'fill must be one of {engine.FILLS}, got {fill!r}')
  values = dict(
      initial_capital=initial_capital, commission_buy=commission,
      commission_sell=commission if commission_sell is None else commission_sell,
      slippage_buy=slippage, slippage_sell=slippage if slippage_sell is None else slippage_sell,
      short_rate=short_rate, trade_band=trade_band, periods_per_year=periods_per_year)
  rules = {'initial_capital': (lambda v: v > 0, '> 0'),
           'commission_buy': (lambda v: 0 <= v < 1, 'in [0, 1)'),
           'commission_sell': (lambda v: 0 <= v < 1, 'in [0, 1)'),
           'slippage_buy': (lambda v: 0 <= v < 1, 'in [0, 1)'),
           'slippage_sell': (lambda v: 0 <= v < 1, 'in [0, 1)'),
           'short_rate': (lambda v: v >= 0, '>= 0'), 'trade_band': (lambda v: v >= 0, '>= 0'),
           'periods_per_year': (lambda v: v > 0, '> 0')}
  for name, (ok, rule) in rules.items():
    value = float(values[name])
    if not (np.isfinite(value) and ok(value)):
      raise ValueError(f'portfolio setting {name} must be finite and {rule}, got {value}')
  return PortfolioParams(**{k: np.float64(v) for k, v in values.items()},
                         fill_next_open=np.int32(engine.FILLS.index(fill)),
                         trim=np.int32(bool(trim)))


def as_panel_prices(panel: Any) -> PanelPrices:
  """`PanelPrices` of anything with `open`, `close` and `available` (a universe `Panel`)."""
  return PanelPrices(panel.open, panel.close, panel.available)


def check_panel(prices: PanelPrices, targets: Any = None) -> None:
  """Raises ValueError for mismatched shapes, non-bool availability, an available bar without
  finite positive open and close, or non-finite targets other than NaN."""
  shape = np.shape(prices.close)
  if len(shape) != 2 or not shape[0]:
    raise ValueError(f'close must be (bars, assets) with bars > 0, got shape {shape}')
  available = np.asarray(prices.available)
  if np.shape(prices.open) != shape or available.shape != shape or available.dtype != bool:
    raise ValueError(f'open and available (bool) must have the shape of close {shape}, got '
                     f'{np.shape(prices.open)} and {available.dtype} {available.shape}')
  for name in ('open', 'close'):
    values = np.asarray(getattr(prices, name), np.float64)
    bad = np.argwhere(available & ~(np.isfinite(values) & (values > 0)))
    if bad.size:
      t, a = bad[0]
      raise ValueError(f'bar {t}, asset {a} is available but its {name} is {values[t, a]}; '
                       'an available bar needs finite positive prices')
  if targets is not None:
    targets = np.asarray(targets, np.float64)
    if targets.shape != shape:
      raise ValueError(f'targets must have the shape of close {shape}, got {targets.shape}')
    bad = np.argwhere(np.isinf(targets))
    if bad.size:
      raise ValueError(f'targets at bar {bad[0][0]}, asset {bad[0][1]} is infinite; use '
                       'NaN to keep a position')


def last_marks(close: jax.Array) -> jax.Array:
  """(bars, assets) the last finite close at or before each bar, 0 before a coin's first."""
  bars = close.shape[0]
  seen = jnp.where(jnp.isfinite(close), jnp.arange(bars)[:, None], -1)
  last = jax.lax.cummax(seen, axis=0)
  marks = jnp.take_along_axis(close, jnp.maximum(last, 0), axis=0)
  return jnp.where(last >= 0, marks, 0.0)


def _coin_order(pos: jax.Array, weight: jax.Array, ref: jax.Array, tradable: jax.Array,
                equity: jax.Array, p: PortfolioParams) -> jax.Array:
  """Signed units one coin trades at `ref` towards `weight` of `equity` (all scalars)."""
  placed = tradable & jnp.isfinite(weight)
  w = jnp.where(placed, weight, 0.0)
  ref = jnp.where(placed, ref, 1.0)
  value = w * equity
  buy_units = value / (ref * (1 + p.slippage_buy) * (1 + p.commission_buy))
  sell_units = value / (ref * (1 - p.slippage_sell))
  want = value / ref - pos
  qty = jnp.where(want > 0, jnp.maximum(buy_units - pos, 0.0),
                  jnp.where(want < 0, jnp.minimum(sell_units - pos, 0.0), 0.0))
  exit_or_flip = (pos != 0) & (w * pos <= 0)
  reduces_side = (w * pos > 0) & (qty * pos < 0)
  large = jnp.abs(qty) * ref > p.trade_band * equity
  trades = placed & (qty != 0) & ((p.trim > 0) | ~reduces_side) & (exit_or_flip | large)
  return jnp.where(trades, qty, 0.0)


@functools.partial(jax.jit, static_argnames=('sleeves',))
def _simulate(prices: PanelPrices, targets: jax.Array, p: PortfolioParams,
              sleeves: bool) -> PortfolioResult:
  dtype = jnp.result_type(float)
  opens, closes = (jnp.asarray(x, dtype) for x in prices[:2])
  available = jnp.asarray(prices.available, bool)
  targets = jnp.asarray(targets, dtype)
  p = jax.tree.map(lambda x: jnp.asarray(x, dtype), p)
  bars, assets = closes.shape
  next_open = p.fill_next_open > 0.5
  marks = last_marks(closes)
  before = jnp.concatenate([jnp.zeros((1, assets), dtype), marks[:-1]])
  # Bar t fills the decision of bar t at its close, or that of bar t-1 at its open.
  open_ref = jnp.where(jnp.isfinite(opens), opens, before)
  ref = jnp.where(next_open, open_ref, marks)
  decided = jnp.where(next_open, jnp.concatenate([jnp.full((1, assets), jnp.nan, dtype),
                                                  targets[:-1]]), targets)
  decided_on = jnp.where(next_open, jnp.concatenate([jnp.zeros((1, assets), bool),
                                                     available[:-1]]), available)
  tradable = available & decided_on
  order = jax.vmap(_coin_order, in_axes=(0, 0, 0, 0, 0, None))
  borrow_rate = p.short_rate / p.periods_per_year

  def step(carry, x):
    cash, pos = carry
    ref_t, tradable_t, weight, mark = x
    sleeve = cash + pos * ref_t
    equity = sleeve if sleeves else jnp.broadcast_to(jnp.sum(sleeve), sleeve.shape)
    qty = order(pos, weight, ref_t, tradable_t, equity, p)
    buy = qty > 0
    price = jnp.where(buy, ref_t * (1 + p.slippage_buy),
                      jnp.where(qty < 0, ref_t * (1 - p.slippage_sell), 0.0))
    commission = jnp.abs(qty) * price * jnp.where(buy, p.commission_buy, p.commission_sell)
    slippage = jnp.abs(qty) * jnp.where(qty != 0, ref_t, 0.0) * jnp.where(
        buy, p.slippage_buy, p.slippage_sell)
    pos = pos + qty
    borrow = borrow_rate * jnp.maximum(-pos, 0.0) * mark
    cash = cash - qty * price - commission - borrow
    value = pos * mark
    return (cash, pos), (qty, price, commission, slippage, pos, cash, cash + value,
                         jnp.sum(borrow), jnp.sum(jnp.abs(value)))

  cash0 = jnp.full((assets,), p.initial_capital / assets, dtype)
  _, record = jax.lax.scan(step, (cash0, jnp.zeros((assets,), dtype)),
                           (ref, tradable, decided, marks))
  qty, price, commission, slippage, pos, cash, sleeve_equity, borrow, exposure = record
  equity = jnp.sum(sleeve_equity, axis=1)
  costs = jnp.sum(commission + slippage, axis=1) + borrow
  return PortfolioResult(equity=equity, gross_equity=equity + jnp.cumsum(costs),
                         cash=jnp.sum(cash, axis=1), borrow=borrow, exposure=exposure,
                         fill_qty=qty, fill_price=price, commission=commission,
                         slippage=slippage, position=pos, sleeve_equity=sleeve_equity)


def run_portfolio(panel: Any, targets: Any, params: PortfolioParams, *,
                  sleeves: bool = False) -> PortfolioResult:
  """Simulates target weights over a panel (see the module docstring for the semantics).

  Args:
    panel: PanelPrices, or anything with `open`, `close`, `available` of (bars, assets).
    targets: (bars, assets) signed weights decided at each close; NaN keeps the position.
    params: from `make_portfolio_params`.
    sleeves: True: coin a has `capital / assets` of its own and sizes from its own equity
      (per-coin timing); False: one cash account, weights of the whole portfolio's equity.

  Returns:
    PortfolioResult of (bars,) and (bars, assets) arrays.
  """
  prices = as_panel_prices(panel)
  check_panel(prices, targets)
  return _simulate(prices, jnp.asarray(targets), params, sleeves)


def targets_from_actions(actions: Any, confidence: Any = None, *,
                         max_position_pct: float = 0.10, sizing: str = 'confidence',
                         allow_short: bool = False) -> np.ndarray:
  """Per-coin targets of SELL / HOLD / BUY actions, as the seed sizes them (SPEC section 6).

  BUY -> `confidence * max_position_pct` (`sizing='confidence'`) or `max_position_pct`
  (`'fixed'`); SELL -> 0, or minus that with `allow_short`; HOLD -> NaN (keep). Run them with
  `trim=False` for the seed's "a BUY never reduces a larger position".

  Args:
    actions: (bars, assets) ints 0 = SELL, 1 = HOLD, 2 = BUY.
    confidence: (bars, assets) in [0, 1]; needed for `sizing='confidence'`.

  Returns:
    (bars, assets) float64 targets.
  """
  actions = np.asarray(actions)
  if sizing not in ('confidence', 'fixed'):
    raise ValueError(f"sizing must be 'confidence' or 'fixed', got {sizing!r}")
  if sizing == 'confidence' and confidence is None:
    raise ValueError("sizing='confidence' needs the confidence of every action")
  size = np.asarray(engine.position_fraction(
      sizing == 'confidence', np.ones(actions.shape) if confidence is None else confidence,
      max_position_pct, max_position_pct), np.float64)
  sell = -size if allow_short else np.zeros(actions.shape)
  return np.where(actions == BUY, size, np.where(actions == SELL, sell, np.nan))


def _fill_slots(ranks: jax.Array, candidate: jax.Array, free: jax.Array) -> jax.Array:
  """The `free` best-ranked candidates (rank 0 is best): (assets,) -> (assets,) bool."""
  key = jnp.where(candidate, ranks, ranks.shape[0])
  place = jnp.argsort(jnp.argsort(key, stable=True), stable=True)
  return candidate & (place < free)


@functools.partial(jax.jit, static_argnames=('long_short',))
def _rank_targets(score: jax.Array, available: jax.Array, k: Any, rebalance_every: Any,
                  band: Any, gross: Any, long_short: bool) -> jax.Array:
  """Book weights per bar: see `rank_targets`."""
  score = jnp.asarray(score, jnp.result_type(float))
  available = jnp.asarray(available, bool)
  bars, assets = score.shape
  per_coin = gross / (2 * k if long_short else k)

  def step(books, x):
    longs, shorts = books
    row, avail, rebalance = x
    valid = avail & jnp.isfinite(row)
    # Ranks among the valid coins, 0 = highest score (ties by column); the others rank last.
    best = jnp.argsort(jnp.argsort(jnp.where(valid, -row, jnp.inf), stable=True), stable=True)
    worst = jnp.where(valid, jnp.sum(valid) - 1 - best, assets)
    # A held coin stays while within k + band, or while it cannot be traded.
    kept_long = longs & ((valid & (best < k + band)) | ~avail)
    kept_short = shorts & ((valid & (worst < k + band)) | ~avail)
    new_long = kept_long | _fill_slots(best, valid & ~kept_long & ~kept_short,
                                       k - jnp.sum(kept_long))
    new_short = kept_short | _fill_slots(worst, valid & ~new_long & ~kept_short,
                                         k - jnp.sum(kept_short))
    new_short = new_short & long_short
    longs = jnp.where(rebalance, new_long, longs)
    shorts = jnp.where(rebalance, new_short, shorts)
    weight = jnp.where(longs, per_coin, jnp.where(shorts, -per_coin, 0.0))
    return (longs, shorts), jnp.where(rebalance & avail, weight, jnp.nan)

  none = jnp.zeros((assets,), bool)
  rebalances = jnp.arange(bars) % rebalance_every == 0
  _, weights = jax.lax.scan(step, (none, none), (score, available, rebalances))
  return weights


def rank_targets(score: Any, available: Any, *, k: int, rebalance_every: int = 1,
                 band: int = 0, gross: float = 1.0, long_short: bool = False) -> np.ndarray:
  """Target weights of a long top-k (or long top-k / short bottom-k) book of the coins.

  Every `rebalance_every` bars from bar 0, among the coins available with a finite score:
  a held coin stays while its rank is below k + band (a held coin that cannot be traded
  stays too), and the free slots of each book go to the best-ranked coins in no book. Long
  members weigh `gross / k` (long-only) or `gross / (2k)` (long-short, so the books are
  dollar-neutral), short members minus that, other available coins 0 (sold if held).
  Between rebalances, and for unavailable coins, the target is NaN (keep).

  Args:
    score: (bars, assets) decided on bars <= t; higher is better.
    available: (bars, assets) bool.
    k: coins per book; rebalance_every: bars between decisions; band: hysteresis in ranks.
    gross: sum of |weights| when the books are full.

  Returns:
    (bars, assets) float64 targets for `run_portfolio`.
  """
  score = np.asarray(score, np.float64)
  available = np.asarray(available)
  if score.ndim != 2 or available.shape != score.shape or available.dtype != bool:
    raise ValueError(f'score (bars, assets) and available (bool) must have one shape, got '
                     f'{score.shape} and {available.dtype} {available.shape}')
  if k < 1 or rebalance_every < 1 or band < 0 or not gross > 0:
    raise ValueError(f'need k >= 1, rebalance_every >= 1, band >= 0, gross > 0; got k={k}, '
                     f'rebalance_every={rebalance_every}, band={band}, gross={gross}')
  weights = _rank_targets(score, available, k, rebalance_every, band, gross, long_short)
  return np.asarray(weights, np.float64)


def timing_portfolio(panel: Any, targets: Any, params: PortfolioParams) -> PortfolioResult:
  """Each coin timed by its own targets with equal capital per coin (sleeves), summed.

  Args:
    targets: (bars, assets) fractions of each coin's sleeve equity (`targets_from_actions`).
  """
  return run_portfolio(panel, targets, params, sleeves=True)


def top_k_portfolio(panel: Any, score: Any, params: PortfolioParams, *, k: int,
                    rebalance_every: int = 1, band: int = 0,
                    gross: float = 1.0) -> PortfolioResult:
  """Long-only: the k best-scored available coins, equal weight (see `rank_targets`)."""
  prices = as_panel_prices(panel)
  targets = rank_targets(score, np.asarray(prices.available), k=k,
                         rebalance_every=rebalance_every, band=band, gross=gross)
  return run_portfolio(prices, targets, params)


def long_short_portfolio(panel: Any, score: Any, params: PortfolioParams, *, k: int,
                         rebalance_every: int = 1, band: int = 0,
                         gross: float = 1.0) -> PortfolioResult:
  """Dollar-neutral: long the k best, short the k worst coins (see `rank_targets`); the
  shorts pay `params.short_rate`."""
  prices = as_panel_prices(panel)
  targets = rank_targets(score, np.asarray(prices.available), k=k,
                         rebalance_every=rebalance_every, band=band, gross=gross,
                         long_short=True)
  return run_portfolio(prices, targets, params)


def benchmark_targets(available: Any, *, rebalance_every: int | None = None,
                      column: int | None = None) -> np.ndarray:
  """Targets of the two benchmarks (SPEC section 12).

  `column=None`: equal weight of the coins available, set at bar 0 and every
  `rebalance_every` bars (None: bought once at bar 0 and held; a coin listed later never
  enters). `column=a`: all of the equity in coin a at its first available bar, then held.

  Returns:
    (bars, assets) float64 targets for `run_portfolio`.
  """
  available = np.asarray(available, bool)
  bars, assets = available.shape
  targets = np.full((bars, assets), np.nan)
  if column is not None:
    first = np.flatnonzero(available[:, column])
    if not first.size:
      raise ValueError(f'asset {column} is never available; no buy-and-hold to run')
    targets[first[0], column] = 1.0
    return targets
  every = bars if rebalance_every is None else rebalance_every
  if every < 1:
    raise ValueError(f'rebalance_every must be >= 1, got {rebalance_every}')
  rows = np.arange(0, bars, every)
  count = available[rows].sum(axis=1, keepdims=True)
  targets[rows] = np.where(available[rows], 1.0 / np.maximum(count, 1), np.nan)
  return targets


def summarize_portfolio(result: PortfolioResult, params: PortfolioParams) -> dict[str, float]:
  """Gross, cost and net of a portfolio run (SPEC section 9), keys `SUMMARY_NAMES`.

  `*_sharpe` from the per-bar returns of the net and gross equity; `commission`, `slippage`,
  `borrow` in currency, `cost_return` all three as a fraction of the capital;
  `turnover_per_year` traded notional / mean equity, annualised; `mean_exposure` the mean of
  the gross position value over equity; `num_fills` coin-level fills.
  """
  capital = float(params.initial_capital)
  periods = float(params.periods_per_year)
  net = np.asarray(result.equity, np.float64)
  gross = np.asarray(result.gross_equity, np.float64)
  qty = np.asarray(result.fill_qty, np.float64)
  notional = np.sum(np.abs(qty) * np.asarray(result.fill_price, np.float64))
  costs = {name: float(np.sum(np.asarray(getattr(result, name), np.float64)))
           for name in ('commission', 'slippage', 'borrow')}

  def sharpe(equity):
    returns = np.asarray(metrics_lib.period_returns(jnp.asarray(equity), capital))
    return significance.sharpe_ratio(returns, periods) if len(returns) > 1 else float('nan')

  values = {
      'net_total_return': net[-1] / capital - 1, 'gross_total_return': gross[-1] / capital - 1,
      'net_sharpe': sharpe(net), 'gross_sharpe': sharpe(gross), **costs,
      'cost_return': sum(costs.values()) / capital,
      'turnover_per_year': notional / np.mean(net) * periods / len(net),
      'mean_exposure': float(np.mean(np.asarray(result.exposure, np.float64) / net)),
      'num_fills': int(np.sum(qty != 0))}
  values['cost_drag_sharpe'] = values['gross_sharpe'] - values['net_sharpe']
  return {name: values[name] if name == 'num_fills' else float(values[name])
          for name in SUMMARY_NAMES}


def sleeve_returns(result: PortfolioResult, params: PortfolioParams,
                   available: Any) -> np.ndarray:
  """Each coin's net return per bar in a timing portfolio (`timing_portfolio`): its sleeve's
  equity change over the sleeve's equity a bar before (the first bar against its starting
  `capital / assets`); NaN where the coin is not available (not listed, a gap), so a coin's
  statistics use only its own bars.

  Returns:
    (bars, assets) float64.
  """
  sleeve = np.asarray(result.sleeve_equity, np.float64)
  start = np.full((1, sleeve.shape[1]), float(params.initial_capital) / sleeve.shape[1])
  before = np.concatenate([start, sleeve[:-1]])
  with np.errstate(divide='ignore', invalid='ignore'):
    returns = sleeve / before - 1.0
  return np.where(np.asarray(available, bool) & np.isfinite(returns), returns, np.nan)


@functools.partial(jax.jit, static_argnames=('long_short',))
def _rank_equities(prices: PanelPrices, scores: jax.Array, params: PortfolioParams, k: Any,
                   rebalance_every: Any, band: Any, gross: Any, long_short: bool) -> jax.Array:
  def one(score):
    targets = _rank_targets(score, prices.available, k, rebalance_every, band, gross,
                            long_short)
    return _simulate(prices, targets, params, False).equity
  return jax.vmap(one)(scores)


def rank_portfolio_returns(panel: Any, scores: Any, params: PortfolioParams, *, k: int,
                           rebalance_every: int = 1, band: int = 0, gross: float = 1.0,
                           long_short: bool = True) -> np.ndarray:
  """Net per-bar returns of many ranked books over one panel in one compiled call, e.g. the
  long-short portfolio of a score and of that score rotated in time (a placebo).

  Args:
    scores: (R, bars, assets) scores; each makes the book of `long_short_portfolio` (or
      `top_k_portfolio` with `long_short=False`) with the same settings.

  Returns:
    (R, bars) float64 net returns (`metrics.period_returns` of each equity curve).
  """
  prices = as_panel_prices(panel)
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 3 or scores.shape[1:] != np.shape(prices.close):
    raise ValueError(f'scores must be (R, bars, assets) with (bars, assets) = '
                     f'{np.shape(prices.close)}, got {scores.shape}')
  rank_targets(scores[0], np.asarray(prices.available), k=k, rebalance_every=rebalance_every,
               band=band, gross=gross, long_short=long_short)  # checks the settings
  equity = _rank_equities(prices, jnp.asarray(scores), params, k, rebalance_every, band,
                          gross, long_short)
  equity = np.asarray(equity, np.float64)
  start = np.full((equity.shape[0], 1), float(params.initial_capital))
  return equity / np.concatenate([start, equity[:, :-1]], axis=1) - 1.0


def rotated_scores(score: Any, offsets: Any) -> np.ndarray:
  """`score` (bars, assets) shifted in time by each offset (circularly, every coin by the
  same bars): the cross-section and turnover of the real scores, no alignment with the
  prices. Returns (len(offsets), bars, assets)."""
  score = np.asarray(score)
  return np.stack([np.roll(score, int(o), axis=0) for o in offsets])
