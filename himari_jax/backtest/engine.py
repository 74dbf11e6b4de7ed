"""Vectorised backtest of SELL / HOLD / BUY decisions on hourly bars (SPEC section 6).

The simulation is one `jax.lax.scan` over bars carrying cash and position. Its settings,
`BacktestParams`, are a pytree of scalars: choices that would change control flow (fill timing,
shorting, sizing) are numeric flags applied with `jnp.where`, so one compiled call covers a
grid that mixes them and `jax.vmap` batches over settings and over signals (models, ensemble
strategies). `sweep` runs such a grid in one jit call and returns a table of metrics:
every metric, or (`metrics='core'`) returns, risk ratios, drawdown and trades from running
sums carried through the scan, the fast mode for screening large grids. The scan takes a
`DecisionRule`: `ACTIONS_RULE` executes SELL / HOLD / BUY actions as below; `policy.py`
supplies a rule that maps probabilities to target positions (SPEC section 8) and runs on the
same scan and sweep (`policy.run_policy`, `policy.sweep_policies`).

Semantics (defaults are the seed's):

* A decision is taken at the close of bar t. BUY / SELL whose confidence is below
  `confidence_threshold` become HOLD.
* Fill at the close of bar t (`fill='close'`, seed) or at the open of bar t+1
  (`fill='next_open'`; the last bar's decision then never fills). The fill price is the
  reference price times `1 + slippage` for buys and `1 - slippage` for sells.
* BUY raises the position to a target of `f * equity / fill_price` units, with `equity` the
  portfolio marked at the reference price just before the fill and `f = confidence *
  max_position_pct` (`sizing='confidence'`, seed), `max_position_pct` (`'fixed'`) or
  `1 / (1 + commission)` (`'full'`: the whole equity, commission included; when the BUY also
  covers a short, as much as cash can pay). A BUY never reduces a larger position and is
  skipped if cash cannot pay for it with commission.
* SELL closes a long position (long-only, seed); with `allow_short` it takes the position
  down to a short of the same target size (never reducing a larger short). Short proceeds go
  to cash; margin is not modelled. HOLD keeps the position.
* Commission is a fraction of the traded notional `|qty| * fill_price`; slippage, reported in
  currency, is `|qty| * reference_price * slippage`. Buy and sell sides have their own rates.
* Equity `cash + position * close` is marked to market at every close.

`prices` is a `Prices(open, close)` of (N,) arrays or an (N, 2) array with columns
[open, close]; `actions`: (N,) ints (0 = SELL, 1 = HOLD, 2 = BUY); `confidence`: (N,) floats
in [0, 1]. Everything runs in the default float dtype: in float32, rounding accumulates to
about 1e-6 (seed sizing) to 1e-5 (full sizing) relative error in equity over 40,000 bars and
thousands of fills, and a confidence within float32 rounding of the threshold can compare
differently than in float64; under `with jax.enable_x64():` the arithmetic is float64.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from himari_jax.backtest import sharding
from himari_jax.constants import BUY, HOLD, PERIODS_PER_YEAR, SELL
from himari_jax.stats import metrics as metrics_lib

FILLS = ('close', 'next_open')
SIZINGS = ('confidence', 'fixed', 'full')
_FULL = SIZINGS.index('full')
_CONFIDENCE = SIZINGS.index('confidence')
# A BUY may overdraw cash by this fraction of equity: absorbs float32 rounding when 'full'
# sizing spends exactly all cash, far below any real price or cost effect (0.1 on 100,000).
_CASH_TOLERANCE = 1e-6


class Prices(NamedTuple):
  """Open and close of every bar, each (N,)."""

  open: Any
  close: Any


@flax.struct.dataclass
class BacktestParams:
  """Backtest settings as a pytree of scalars; give every leaf a leading axis to batch.

  Build with `make_params` (validated) or `make_grid`; flags are ints: `fill_next_open` and
  `allow_short` in {0, 1}, `sizing` an index into `SIZINGS`.
  """

  initial_capital: Any
  commission_buy: Any
  commission_sell: Any
  slippage_buy: Any
  slippage_sell: Any
  max_position_pct: Any
  confidence_threshold: Any
  fill_next_open: Any
  allow_short: Any
  sizing: Any


@flax.struct.dataclass
class BacktestResult:
  """Per-bar record of a backtest, every field (N,) (with leading batch axes under vmap).

  fill_qty: signed units filled in the bar (0 = no fill); fill_price: price paid or received
  (0 without a fill); commission, slippage: costs of that fill in currency; position: units
  held after the fill; cash: cash after the fill; equity: cash + position * close at the
  bar's close; confidence: confidence of the decision that the bar executes (for
  `next_open`, the previous bar's).
  """

  fill_qty: jax.Array
  fill_price: jax.Array
  commission: jax.Array
  slippage: jax.Array
  position: jax.Array
  cash: jax.Array
  equity: jax.Array
  confidence: jax.Array


def make_params(*, initial_capital: float = 100_000.0, commission: float = 0.001,
                slippage: float = 0.0005, commission_sell: float | None = None,
                slippage_sell: float | None = None, max_position_pct: float = 0.10,
                confidence_threshold: float = 0.0, fill: str = 'close',
                allow_short: bool = False, sizing: str = 'confidence') -> BacktestParams:
  """Validated scalar `BacktestParams`; `*_sell=None` uses the buy-side rate.

  Raises:
    ValueError: naming the offending setting (negative costs, threshold outside [0, 1], ...).
  """
  if fill not in FILLS:
    raise ValueError(f'fill must be one of {FILLS}, got {fill!r}')
  if sizing not in SIZINGS:
    raise ValueError(f'sizing must be one of {SIZINGS}, got {sizing!r}')
  params = BacktestParams(
      initial_capital=np.float64(initial_capital),
      commission_buy=np.float64(commission),
      commission_sell=np.float64(commission if commission_sell is None else commission_sell),
      slippage_buy=np.float64(slippage),
      slippage_sell=np.float64(slippage if slippage_sell is None else slippage_sell),
      max_position_pct=np.float64(max_position_pct),
      confidence_threshold=np.float64(confidence_threshold),
      fill_next_open=np.int32(FILLS.index(fill)),
      allow_short=np.int32(bool(allow_short)),
      sizing=np.int32(SIZINGS.index(sizing)))
  check_params(params)
  return params


def settings_from_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`make_params` keyword arguments from a config shaped like `configs/backtest.py`."""
  return dict(
      initial_capital=config.initial_capital, commission=config.commission,
      slippage=config.slippage, commission_sell=config.get('commission_sell'),
      slippage_sell=config.get('slippage_sell'), max_position_pct=config.max_position_pct,
      confidence_threshold=config.confidence_threshold, fill=config.fill,
      allow_short=config.allow_short, sizing=config.sizing)


def params_from_config(config: ml_collections.ConfigDict) -> BacktestParams:
  """`BacktestParams` from a config shaped like `configs/backtest.py`."""
  return make_params(**settings_from_config(config))


def params_to_dict(params: BacktestParams) -> dict[str, Any]:
  """Scalar params as plain Python values, flags decoded to names (for JSON and tables)."""
  values = {k: np.asarray(v).item() for k, v in vars(params).items()}
  values['fill'] = FILLS[values.pop('fill_next_open')]
  values['allow_short'] = bool(values['allow_short'])
  values['sizing'] = SIZINGS[values['sizing']]
  return values


def params_table(params: BacktestParams) -> pd.DataFrame:
  """Batched params (C,) as a DataFrame of C rows, columns as `params_to_dict` names them."""
  columns = {k: np.atleast_1d(np.asarray(v)) for k, v in vars(params).items()}
  columns['fill'] = np.asarray(FILLS, dtype=object)[columns.pop('fill_next_open')]
  columns['allow_short'] = columns['allow_short'].astype(bool)
  columns['sizing'] = np.asarray(SIZINGS, dtype=object)[columns['sizing']]
  return pd.DataFrame(columns)


def make_grid(base: Mapping[str, Any] | None = None, **axes: Sequence[Any]) -> BacktestParams:
  """Cartesian product of `make_params` settings as one batched `BacktestParams`.

  Example: `make_grid(dict(fill='next_open'), confidence_threshold=[0.5, 0.6],
  sizing=['confidence', 'full'])` gives 4 configurations, the last axis varying fastest.

  Returns:
    BacktestParams whose leaves have shape (prod(len(values)),).
  """
  base = dict(base or {})
  names = list(axes)
  grid = [make_params(**{**base, **dict(zip(names, combo, strict=True))})
          for combo in itertools.product(*(axes[name] for name in names))]
  return jax.tree.map(lambda *leaves: np.stack(leaves), *grid)


def check_params(params: BacktestParams) -> None:
  """Raises ValueError naming any invalid setting; params may be batched (numpy leaves)."""
  values = {k: np.asarray(v, dtype=np.float64) for k, v in vars(params).items()}
  checks = (
      ('initial_capital', lambda v: np.isfinite(v) & (v > 0), 'must be finite and > 0'),
      ('commission_buy', lambda v: (v >= 0) & (v < 1), 'must be in [0, 1)'),
      ('commission_sell', lambda v: (v >= 0) & (v < 1), 'must be in [0, 1)'),
      ('slippage_buy', lambda v: (v >= 0) & (v < 1), 'must be in [0, 1)'),
      ('slippage_sell', lambda v: (v >= 0) & (v < 1), 'must be in [0, 1)'),
      ('max_position_pct', lambda v: np.isfinite(v) & (v > 0), 'must be finite and > 0'),
      ('confidence_threshold', lambda v: (v >= 0) & (v <= 1), 'must be in [0, 1]'),
      ('fill_next_open', lambda v: (v == 0) | (v == 1), 'must be 0 or 1'),
      ('allow_short', lambda v: (v == 0) | (v == 1), 'must be 0 or 1'),
      ('sizing', lambda v: np.isin(v, range(len(SIZINGS))), f'must index {SIZINGS}'),
  )
  for name, ok, rule in checks:
    bad = ~ok(values[name])
    if np.any(bad):
      raise ValueError(f'backtest setting {name} {rule}, got {values[name][bad].flat[0]}')


def as_prices(prices: Any) -> Prices:
  """`Prices` from a `Prices`, an (N, 2) [open, close] array or an OHLCV DataFrame."""
  if isinstance(prices, Prices):
    return prices
  if isinstance(prices, pd.DataFrame):
    return Prices(prices['open'].to_numpy(), prices['close'].to_numpy())
  if np.ndim(prices) != 2 or np.shape(prices)[1] != 2:
    raise ValueError(
        f'prices must be Prices(open, close) or an (N, 2) [open, close] array, '
        f'got shape {np.shape(prices)}')
  return Prices(prices[:, 0], prices[:, 1])


def _is_concrete(*trees: Any) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def check_inputs(prices: Prices, actions: Any, confidence: Any) -> None:
  """Raises ValueError for mismatched lengths, NaN / non-positive prices, bad actions."""
  shapes = {'prices.open': np.shape(prices.open), 'prices.close': np.shape(prices.close),
            'actions': np.shape(actions), 'confidence': np.shape(confidence)}
  if len(set(shapes.values())) != 1 or len(shapes['prices.close']) != 1:
    raise ValueError(f'prices, actions and confidence must be (N,) of one length, got {shapes}')
  if shapes['actions'][0] < 1:
    raise ValueError('the backtest needs at least one bar')
  for name in ('open', 'close'):
    values = np.asarray(getattr(prices, name), dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
    if bad.size:
      raise ValueError(
          f'prices.{name} must be finite and > 0: bar {bad[0]} is {values[bad[0]]} '
          f'({bad.size} bad bars)')
  actions = np.asarray(actions)
  if actions.dtype == bool:  # True / False would silently read as HOLD / SELL
    raise ValueError('actions are booleans; pass ints 0 (SELL), 1 (HOLD) or 2 (BUY), e.g. '
                     'np.where(signal, 2, 0) for long / flat')
  bad = np.flatnonzero((actions != SELL) & (actions != HOLD) & (actions != BUY))
  if bad.size:
    raise ValueError(f'actions must be 0 (SELL), 1 (HOLD) or 2 (BUY): bar {bad[0]} is '
                     f'{actions[bad[0]]}')
  confidence = np.asarray(confidence, dtype=np.float64)
  bad = np.flatnonzero(~((confidence >= 0) & (confidence <= 1)))
  if bad.size:
    raise ValueError(f'confidence must be in [0, 1]: bar {bad[0]} is {confidence[bad[0]]}')


def run_backtest(prices: Any, actions: Any, confidence: Any,
                 params: BacktestParams | ml_collections.ConfigDict) -> BacktestResult:
  """Simulates the decisions bar by bar (see the module docstring for the semantics).

  Concrete inputs are validated; traced ones (under jit / vmap) are not, so
  `jax.vmap(run_backtest, in_axes=(None, None, None, 0))` batches over settings.

  Args:
    prices: Prices(open, close) of (N,) arrays, an (N, 2) [open, close] array or a DataFrame.
    actions: (N,) ints, 0 = SELL, 1 = HOLD, 2 = BUY.
    confidence: (N,) floats in [0, 1].
    params: scalar BacktestParams, or a config shaped like configs/backtest.py.

  Returns:
    BacktestResult of (N,) arrays.
  """
  if isinstance(params, ml_collections.ConfigDict):
    params = params_from_config(params)
  prices = as_prices(prices)
  if _is_concrete(prices, actions, confidence):
    check_inputs(prices, actions, confidence)
  if _is_concrete(params):
    check_params(params)
  return _simulate(prices, actions, confidence, params, None)[0]


def continue_backtest(prices: Any, actions: Any, confidence: Any, params: BacktestParams,
                      start: BarState) -> tuple[BacktestResult, BarState]:
  """`run_backtest` of bars that follow a backtest which ended in `start`.

  A backtest of bars 0..N-1 split anywhere into runs that each continue from the state the
  previous one ended in gives the same record as one run over all of them (paper trading steps
  one bar at a time this way).

  Args:
    prices, actions, confidence, params: as in `run_backtest`, (N,) bars.
    start: the state after the bar before these (`start_state` before a first bar).

  Returns:
    (BacktestResult of (N,) arrays, the state after the last bar).
  """
  prices = as_prices(prices)
  check_inputs(prices, actions, confidence)
  check_params(params)
  return _simulate(prices, actions, confidence, params, start)


def buy_and_hold(prices: Any, params: BacktestParams) -> BacktestResult:
  """The benchmark: all equity into the asset at the first fill, then held.

  Uses the costs, capital and fill timing of `params` with full sizing and no threshold.
  """
  prices = as_prices(prices)
  n = np.shape(prices.close)[0]
  actions = jnp.full((n,), HOLD, jnp.int32).at[0].set(BUY)
  params = params.replace(sizing=_FULL, confidence_threshold=0.0, allow_short=0)
  return _simulate(prices, actions, jnp.ones((n,)), params, None)[0]


@jax.jit
def _simulate(prices: Prices, actions: jax.Array, confidence: jax.Array,
              params: BacktestParams, start: BarState | None
              ) -> tuple[BacktestResult, BarState]:
  """The simulation without validation, traceable in every argument; `start` None: from
  `start_state`."""
  dtype = jnp.result_type(float)
  signal = (jnp.asarray(actions, jnp.int32), jnp.asarray(confidence, dtype))
  record, executed, end = scan_bars(prices, signal, params, (), track='result', start=start)
  return BacktestResult(*record, confidence=executed[1]), end


class DecisionRule(NamedTuple):
  """How the scan turns one bar's signal into a fill: the seed's actions, or a policy.

  pad(dtype): the signal of a bar without a decision, a pytree of (1,) arrays.
  init_state(rule_params, like): the rule's state before bar 0 (like: a scalar of the batch).
  decide(cash, pos, signal, ref, inv_ref, params, inv, rule_params, state): signed units to
    trade at reference price `ref` for the executed decision's signal, and the new state.
  """

  pad: Callable[[Any], Any]
  init_state: Callable[[Any, jax.Array], Any]
  decide: Callable[..., tuple[jax.Array, Any]]


def _decide_actions(cash, pos, signal, ref, inv_ref, p, inv, rule_params, state):
  del rule_params
  action, conf = signal
  return _decide_fill(cash, pos, action, conf, ref, inv_ref, p, inv), state


ACTIONS_RULE = DecisionRule(
    pad=lambda dtype: (jnp.full((1,), HOLD, jnp.int32), jnp.zeros((1,), dtype)),
    init_state=lambda rule_params, like: (),
    decide=_decide_actions)


@flax.struct.dataclass
class BarState:
  """What a backtest carries from a bar to the next, every field a scalar (pytree leaves).

  cash, position: the portfolio after the bar's fill; rule_state: the decision rule's state
  after the bar's decision (a policy's side and bars since it changed; () for actions);
  signal: the bar's signal as the rule reads it (with `fill='next_open'` it fills at the next
  bar's open); open, close: the bar's prices.
  """

  cash: Any
  position: Any
  rule_state: Any
  signal: Any
  open: Any
  close: Any


def start_state(prices: Any, params: BacktestParams, rule: DecisionRule = ACTIONS_RULE,
                rule_params: Any = ()) -> BarState:
  """The state before bar 0 of `prices`: the capital in cash, flat, the rule's initial state,
  no decision pending (the rule's signal of a bar without one), marked at bar 0's prices."""
  dtype = jnp.result_type(float)
  prices = as_prices(prices)
  q = jax.tree.map(lambda x: jnp.asarray(x, dtype), rule_params)
  capital = jnp.asarray(params.initial_capital, dtype)
  return BarState(cash=capital, position=jnp.zeros_like(capital),
                  rule_state=rule.init_state(q, jnp.zeros_like(capital)),
                  signal=jax.tree.map(lambda x: x[0], rule.pad(dtype)),
                  open=jnp.asarray(prices.open, dtype)[0],
                  close=jnp.asarray(prices.close, dtype)[0])


def scan_bars(prices: Prices, signal: Any, params: BacktestParams, rule_params: Any,
              track: str, risk_free_per_bar: Any = 0.0,
              rule: DecisionRule = ACTIONS_RULE, start: BarState | None = None) -> Any:
  """The bar-by-bar scan every simulation runs: actions (`run_backtest`, `sweep`) and
  decision policies (`policy.run_policy`, `policy.sweep_policies`) alike.

  Step t decides the fill of bar t and books the fill of bar t-1 that the previous step
  decided and carried (one extra step books the last bar). Carrying the decision matters for
  speed: XLA:CPU copies a shared expression into every loop output that uses it, so without
  it the sizing logic would be recomputed for each of the ~20 state variables of a sweep.
  On CPU each state variable costs a small kernel per bar, so a sweep carries only what its
  metrics need.

  Args:
    prices: (N,) opens and closes.
    signal: pytree of (N,) arrays that `rule.decide` reads bar by bar.
    params: the costs, capital and fill timing (and, for ACTIONS_RULE, the sizing).
    rule_params: the rule's own settings (a PolicyParams, or () for actions).
    track: what to return, 'result', 'all' or 'core' (below).
    risk_free_per_bar: the risk-free return per bar, for the 'core' downside sums.
    rule: the DecisionRule that turns the signal into fills (ACTIONS_RULE or a policy's).
    start: (track 'result' only) the state after the bar before bar 0; None: `start_state`.

  Returns, by `track`: 'result', the per-bar record (qty, price, commission, slippage,
  position, cash, equity), the signal each bar executed and the BarState after the last bar;
  'all', the (N,) equity curve and the metrics.TradeStats accumulated inside the scan; 'core',
  metrics.CoreStats and the final equity.
  """
  dtype = jnp.result_type(float)
  opens, closes = (jnp.asarray(x, dtype) for x in prices)
  p = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  q = jax.tree.map(lambda x: jnp.asarray(x, dtype), rule_params)
  next_open = p.fill_next_open > 0.5
  inv = _reciprocals(p)

  def step(carry, x):
    cash, pos, qty, stats, state = carry
    (bar, now_signal, open_, close, prev_signal, prev_open, prev_close, before_close,
     inv_open, inv_close) = x
    # Bar t executes the decision of bar t ('close') or of bar t-1 ('next_open'). The inputs
    # are selected here, per bar, so they stay shared by every setting of a sweep.
    prev_ref = jnp.where(next_open, prev_open, prev_close)
    price, commission, slippage, new_cash, new_pos = _book_fill(cash, pos, qty, prev_ref, p)
    equity = new_cash + new_pos * prev_close
    if track == 'all':
      stats = metrics_lib.update_trade_stats(stats, bar - 1, pos, cash, qty, price, commission,
                                             slippage, new_pos, new_cash, equity)
      record = equity
    elif track == 'core':
      # The equity before bar t-1 from the state before its fill, marked at bar t-2's close.
      stats = metrics_lib.update_core_stats(stats, bar > 0, cash + pos * before_close, equity,
                                            qty != 0, risk_free_per_bar)
      record = None
    executed = jax.tree.map(lambda a, b: jnp.where(next_open, b, a), now_signal, prev_signal)
    next_qty, state = rule.decide(
        new_cash, new_pos, executed, jnp.where(next_open, open_, close),
        jnp.where(next_open, inv_open, inv_close), p, inv, q, state)
    if track == 'result':
      record = (qty, price, commission, slippage, new_pos, new_cash, equity, state)
    return (new_cash, new_pos, next_qty, stats, state), record

  # One step more than bars: step 0 books nothing (bar -1 is flat at the capital), step N
  # decides nothing (the pad signal) and books bar N-1.
  n = closes.shape[0]
  pad = rule.pad(dtype)
  stats = {'all': metrics_lib.init_trade_stats, 'core': metrics_lib.init_core_stats,
           'result': lambda capital: ()}[track](p.initial_capital)
  zero_qty = jnp.zeros_like(p.initial_capital)
  if start is None:
    init = (p.initial_capital, zero_qty, zero_qty, stats, rule.init_state(q, zero_qty))
    first = (pad, opens[:1], closes[:1])
  else:
    init = (jnp.asarray(start.cash, dtype), jnp.asarray(start.position, dtype), zero_qty, stats,
            jax.tree.map(lambda x: jnp.asarray(x, dtype), start.rule_state))
    first = (jax.tree.map(lambda x, e: jnp.asarray(x, e.dtype)[None], start.signal, pad),
             jnp.asarray(start.open, dtype)[None], jnp.asarray(start.close, dtype)[None])
  now_signal = jax.tree.map(lambda x, e: jnp.concatenate([x, e]), signal, pad)
  prev_signal = jax.tree.map(lambda x, e: jnp.concatenate([e, x]), signal, first[0])
  now = (jnp.concatenate([opens, opens[-1:]]), jnp.concatenate([closes, closes[-1:]]))
  before = (jnp.concatenate([first[1], opens]), jnp.concatenate([first[2], closes]))
  # Bar t-2's close for step t (step 1's state is the capital, flat: any price marks it).
  before_close = jnp.concatenate([closes[:1], closes[:1], closes[:-1]])
  xs = (jnp.arange(n + 1, dtype=jnp.int32), now_signal, *now, prev_signal, *before,
        before_close, 1 / now[0], 1 / now[1])
  (cash, pos, _, stats, _), record = jax.lax.scan(step, init, xs)
  if track == 'core':
    return stats, cash + pos * closes[-1]  # as the last step marks bar N - 1
  if track == 'all':
    return record[1:], stats
  # Step t books bar t-1 and decides bar t: the rule's state after bar N-1 is step N-1's (the
  # last step decides only the pad signal).
  *record, states = record
  record = jax.tree.map(lambda r: r[1:], tuple(record))
  executed = jax.tree.map(lambda now_x, prev_x: jnp.where(next_open, prev_x[:-1], now_x[:-1]),
                          now_signal, prev_signal)
  end = BarState(cash=cash, position=pos, rule_state=jax.tree.map(lambda s: s[n - 1], states),
                 signal=jax.tree.map(lambda x: x[-1], signal), open=opens[-1], close=closes[-1])
  return record, executed, end


class _Reciprocals(NamedTuple):
  """Divisors of the sizing rules inverted once per setting, outside the scan: per bar the
  decision then multiplies (on CPU a division costs several multiplications)."""

  buy: jax.Array  # 1 / (1 + slippage_buy)
  sell: jax.Array  # 1 / (1 - slippage_sell)
  full_buy: jax.Array  # 1 / ((1 + slippage_buy) * (1 + commission_buy))
  full_sell: jax.Array  # 1 / ((1 - slippage_sell) * (1 + commission_sell))


def _reciprocals(p: BacktestParams) -> _Reciprocals:
  return _Reciprocals(
      buy=1 / (1 + p.slippage_buy), sell=1 / (1 - p.slippage_sell),
      full_buy=1 / ((1 + p.slippage_buy) * (1 + p.commission_buy)),
      full_sell=1 / ((1 - p.slippage_sell) * (1 + p.commission_sell)))


def position_fraction(confidence_sizing: Any, confidence: Any, max_position_pct: Any,
                      otherwise: Any) -> jax.Array:
  """The share of equity a decision sizes its position to: `confidence * max_position_pct`
  where `confidence_sizing` (the seed's sizing, SPEC 6), else `otherwise` (`max_position_pct`
  for fixed sizing, a policy's volatility target). The seed's actions, every decision policy
  and per-coin portfolio targets size with it; arrays broadcast."""
  return jnp.where(confidence_sizing, confidence * max_position_pct, otherwise)


def _decide_fill(cash: jax.Array, pos: jax.Array, action: jax.Array, conf: jax.Array,
                 ref: jax.Array, inv_ref: jax.Array, p: BacktestParams,
                 inv: _Reciprocals) -> jax.Array:
  """Signed units to trade for one executed decision (SPEC section 6), given the state.

  `inv_ref` is 1 / ref and `inv` the setting's `_reciprocals`.
  """
  trades = conf >= p.confidence_threshold
  buy_price = ref * (1 + p.slippage_buy)
  budget = jnp.maximum(cash + pos * ref, 0.0)
  frac = position_fraction(p.sizing == _CONFIDENCE, conf, p.max_position_pct,
                           p.max_position_pct)
  full = p.sizing == _FULL
  units = budget * inv_ref
  long_qty = units * jnp.where(full, inv.full_buy, frac * inv.buy)
  short_qty = units * jnp.where(full, inv.full_sell, frac * inv.sell)
  buy_qty = jnp.maximum(long_qty - pos, 0.0)
  # A full BUY that also covers a short buys what cash can pay: a flip to a full long would
  # otherwise never be affordable.
  affordable = jnp.maximum(cash, 0.0) * inv_ref * inv.full_buy
  buy_qty = jnp.where(full, jnp.minimum(buy_qty, affordable), buy_qty)
  buy = ((action == BUY) & trades & (buy_qty > 0)
         & (buy_qty * buy_price * (1 + p.commission_buy) <= cash + _CASH_TOLERANCE * budget))
  sell_qty = jnp.maximum(pos + jnp.where(p.allow_short > 0.5, short_qty, 0.0), 0.0)
  sell = (action == SELL) & trades & (sell_qty > 0)
  return jnp.where(buy, buy_qty, jnp.where(sell, -sell_qty, 0.0))


def _book_fill(cash: jax.Array, pos: jax.Array, qty: jax.Array, ref: jax.Array,
               p: BacktestParams) -> tuple[jax.Array, ...]:
  """Price, commission, slippage and the new cash and position of a fill of `qty` units."""
  buy = qty > 0
  price = jnp.where(buy, ref * (1 + p.slippage_buy),
                    jnp.where(qty < 0, ref * (1 - p.slippage_sell), 0.0))
  commission = jnp.abs(qty) * price * jnp.where(buy, p.commission_buy, p.commission_sell)
  slippage = jnp.abs(qty) * ref * jnp.where(buy, p.slippage_buy, p.slippage_sell)
  return price, commission, slippage, cash - qty * price - commission, pos + qty


def sweep(prices: Any, actions: Any, confidence: Any, params: BacktestParams, *,
          signal_names: Sequence[str] | None = None, benchmark: bool = False,
          periods_per_year: float = PERIODS_PER_YEAR, risk_free_rate: float = 0.0,
          metrics: str = 'all', batch_size: int = 1024,
          devices: Sequence[jax.Device] | None = None) -> pd.DataFrame:
  """Metrics of every (signal, setting) pair, computed in one compiled call.

  The settings are spread over every local device (`sharding.map_settings`): the table is
  the same on any number of devices, up to rounding in the last step of a 'core' ratio
  (XLA compiles a program per device count; about 1e-13 relative in float64).

  `metrics='all'` gives every metric of SPEC section 7; `'core'` only `CORE_METRIC_NAMES`
  (returns, volatility, Sharpe, Sortino, drawdown, Calmar, trades) from running sums carried
  through the scan: no equity curve is kept, several times faster on CPU for large grids,
  so screen with 'core' and report the survivors with 'all'.

  Args:
    prices: as in `run_backtest`, (N,) bars.
    actions: (S, N) or (N,) ints: one row per signal (a model, an ensemble strategy, ...).
    confidence: same shape as actions.
    params: BacktestParams batched to (C,) leaves (e.g. from `make_grid`) or scalar.
    signal_names: S labels for the `signal` column (default '0', '1', ...).
    benchmark: append buy-and-hold rows (signal 'buy_and_hold'), one per distinct capital,
      buy-side costs and fill timing among the settings (not trials: keep them out of
      counts of configurations tried).
    periods_per_year, risk_free_rate: passed to the metrics.
    metrics: 'all' or 'core' (metrics.CORE_METRIC_NAMES).
    batch_size: pairs simulated together on each device (with 'all', memory about
      8 * batch_size * N bytes per device; with 'core', a few bytes per pair). On CPU,
      large batches amortise XLA's per-step overhead; see benchmarks/bench_backtest.py.
    devices: devices the settings are spread over (default `jax.local_devices()`).

  Returns:
    DataFrame with S * C rows (signal-major), then the benchmark rows: `signal`, the
    settings, then the metrics (`metrics.METRIC_NAMES` or `metrics.CORE_METRIC_NAMES`).
  """
  if metrics not in ('all', 'core'):
    raise ValueError(f"metrics must be 'all' or 'core', got {metrics!r}")
  prices = as_prices(prices)
  actions = np.atleast_2d(np.asarray(actions))
  confidence = np.atleast_2d(np.asarray(confidence))
  if actions.shape != confidence.shape:
    raise ValueError(f'actions {actions.shape} and confidence {confidence.shape} differ')
  for row in range(actions.shape[0]):
    check_inputs(prices, actions[row], confidence[row])
  check_params(params)
  params = jax.tree.map(np.atleast_1d, params)
  num_signals, num_settings = actions.shape[0], np.shape(params.sizing)[0]
  names = [str(s) for s in range(num_signals)] if signal_names is None else list(signal_names)
  if len(names) != num_signals:
    raise ValueError(f'{len(names)} signal_names for {num_signals} signals')

  table = sweep_metrics(prices, (jnp.asarray(actions, jnp.int32), jnp.asarray(confidence)),
                        params, (), ACTIONS_RULE, periods_per_year=periods_per_year,
                        risk_free_rate=risk_free_rate, metrics=metrics, batch_size=batch_size,
                        devices=devices)
  settings = params_table(params)
  rows = pd.concat([settings] * num_signals, ignore_index=True)
  rows.insert(0, 'signal', np.repeat(names, num_settings))
  frames = [pd.concat([rows, pd.DataFrame(table)], axis=1)]
  if benchmark:
    frames.append(_benchmark_rows(prices, settings.to_dict('records'), periods_per_year,
                                  risk_free_rate)[frames[0].columns])
  return pd.concat(frames, ignore_index=True)


def sweep_metrics(prices: Prices, signals: Any, params: BacktestParams, rule_params: Any,
                  rule: DecisionRule, *, periods_per_year: float, risk_free_rate: float,
                  metrics: str, batch_size: int,
                  devices: Sequence[jax.Device] | None = None) -> dict[str, np.ndarray]:
  """Metrics of every (signal, setting) pair in one compiled call, without input checks.

  The settings are cut into chunks of `batch_size // S` (every signal runs with a chunk at a
  time, so the scan's per-bar inputs are shared by the chunk's settings instead of copied
  per pair; smaller where that leaves a device without a chunk), and the chunks are spread
  over `devices` (`sharding.map_settings`), each device running its chunks one after
  another. Every setting's metrics come from the same code whatever the device count (up
  to XLA's rounding, see `sweep`).

  Args:
    prices: Prices of (N,) arrays.
    signals: pytree of (S, N) arrays, one row per signal, as `rule.decide` reads them.
    params: BacktestParams batched to (C,) leaves; rule_params: the rule's settings batched
      to the same (C,) (or () for ACTIONS_RULE): setting c is (params[c], rule_params[c]).
    metrics, batch_size, periods_per_year, risk_free_rate, devices: as in `sweep`.

  Returns:
    {metric name: (S * C,) array}, signal-major.
  """
  num_signals = jax.tree.leaves(signals)[0].shape[0]
  num_settings = np.shape(params.sizing)[0]
  devices = tuple(devices or jax.local_devices())
  # At least one chunk per device where there are enough settings: chunks are padded to a
  # multiple of the device count, and padding is work thrown away.
  chunk = max(1, min(-(-num_settings // len(devices)), batch_size // num_signals))
  num_chunks = -(-num_settings // chunk)
  # Pad to whole chunks (repeating the last setting) so a single body is compiled.
  take = np.arange(num_chunks * chunk).clip(max=num_settings - 1)
  chunks = jax.tree.map(lambda leaf: np.asarray(leaf)[take].reshape(num_chunks, chunk),
                        (params, rule_params))
  table = sharding.map_settings(_chunk_metrics(metrics, rule), chunks, prices, signals,
                                periods_per_year, risk_free_rate, batch_size=1,
                                devices=devices)
  metric_names = (metrics_lib.METRIC_NAMES if metrics == 'all'
                  else metrics_lib.CORE_METRIC_NAMES)
  # (chunks, S, chunk) -> (S, C)
  return {k: np.moveaxis(table[k], 1, 0).reshape(num_signals, -1)[:, :num_settings].reshape(-1)
          for k in metric_names}


# Multiples of the configured costs in a cost-sensitivity curve (SPEC section 9).
COST_MULTIPLIERS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def cost_grid(params: BacktestParams,
              multipliers: Sequence[float] = COST_MULTIPLIERS) -> BacktestParams:
  """Scalar `params` with every commission and slippage rate scaled by each multiplier.

  Returns:
    BacktestParams batched to (len(multipliers),).
  """
  scale = np.asarray(multipliers, np.float64)
  if scale.ndim != 1 or not np.all(np.isfinite(scale) & (scale >= 0)):
    raise ValueError(f'cost multipliers must be finite and >= 0, got {multipliers}')
  costs = ('commission_buy', 'commission_sell', 'slippage_buy', 'slippage_sell')
  grid = {k: (np.asarray(v) * scale if k in costs else np.repeat(np.asarray(v), scale.size))
          for k, v in vars(params).items()}
  grid = BacktestParams(**grid)
  check_params(grid)
  return grid


def sensitivity_frame(table: pd.DataFrame, multipliers: Sequence[float]) -> pd.DataFrame:
  """The cost-sensitivity curve from a sweep over `cost_grid(params, multipliers)`."""
  frame = table[['sharpe', 'total_return', 'num_trades']].reset_index(drop=True)
  frame.insert(0, 'cost_multiplier', np.asarray(multipliers, np.float64))
  return frame


def cost_sensitivity(prices: Any, actions: Any, confidence: Any, params: BacktestParams, *,
                     multipliers: Sequence[float] = COST_MULTIPLIERS,
                     periods_per_year: float = PERIODS_PER_YEAR) -> pd.DataFrame:
  """Net Sharpe ratio and return of one signal at multiples of the configured costs, in one
  sweep call (each multiple re-simulated, as sizes depend on the equity costs leave).

  Returns:
    DataFrame with `cost_multiplier`, `sharpe`, `total_return`, `num_trades`.
  """
  table = sweep(prices, actions, confidence, cost_grid(params, multipliers),
                periods_per_year=periods_per_year, metrics='core')
  return sensitivity_frame(table, multipliers)


def _benchmark_rows(prices: Prices, settings: Sequence[Mapping[str, Any]],
                    periods_per_year: float, risk_free_rate: float) -> pd.DataFrame:
  """Buy-and-hold metrics for each distinct (capital, buy costs, fill) among `settings`."""
  market = metrics_lib.market_returns(jnp.asarray(prices.close, jnp.result_type(float)))
  keys = ('initial_capital', 'commission_buy', 'slippage_buy', 'fill')
  rows = []
  for capital, commission, slippage, fill in dict.fromkeys(
      tuple(setting[k] for k in keys) for setting in settings):
    params = make_params(initial_capital=capital, commission=commission, slippage=slippage,
                         max_position_pct=1.0, fill=fill, sizing='full')
    values = metrics_lib.compute_metrics(
        buy_and_hold(prices, params), market, capital, periods_per_year=periods_per_year,
        risk_free_rate=risk_free_rate)
    rows.append({'signal': 'buy_and_hold', **params_to_dict(params),
                 **{k: np.asarray(v).item() for k, v in values.items()}})
  return pd.DataFrame(rows)


# Settings summarised together: the VaR search makes 32 passes over their returns, which then
# stay in cache.
_SUMMARY_BATCH = 16


# One function object per (metrics, rule): `sharding.map_settings` compiles once per function.
@functools.cache
def _chunk_metrics(metrics: str, rule: DecisionRule) -> Callable[..., dict[str, jax.Array]]:
  """`fn(setting, prices, signals, periods_per_year, risk_free_rate)`: metrics of signals
  (S, N) x one chunk of settings (leaves (chunk,)), as (S, chunk) arrays."""

  def chunk_metrics(setting, prices, signals, periods_per_year, risk_free_rate):
    market = metrics_lib.market_returns(jnp.asarray(prices.close, jnp.result_type(float)))
    num_bars = market.shape[0]
    num_signals = jax.tree.leaves(signals)[0].shape[0]
    chunk = np.shape(setting[0].sizing)[0]

    def simulate(signal, one):
      return scan_bars(prices, signal, *one, track=metrics,
                       risk_free_per_bar=risk_free_rate / periods_per_year, rule=rule)

    def summarize(args):
      equity, stats, capital = args
      return metrics_lib.summarize(stats, equity, market, capital,
                                   periods_per_year=periods_per_year,
                                   risk_free_rate=risk_free_rate)

    # (S, chunk) pairs: signals outer, settings inner.
    result = jax.vmap(jax.vmap(simulate, (None, 0)), (0, None))(signals, setting)
    capital = jnp.broadcast_to(setting[0].initial_capital, (num_signals, chunk))
    if metrics == 'core':
      return jax.vmap(jax.vmap(functools.partial(
          metrics_lib.summarize_core, num_bars=num_bars, periods_per_year=periods_per_year,
          risk_free_rate=risk_free_rate)))(*result, initial_capital=capital)
    pairs = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), (*result, capital))
    table = jax.lax.map(summarize, pairs, batch_size=min(_SUMMARY_BATCH, pairs[-1].shape[0]))
    return jax.tree.map(lambda x: x.reshape(num_signals, chunk), table)

  return chunk_metrics
