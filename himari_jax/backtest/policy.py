"""Decision policies (SPEC section 8): calibrated probabilities -> target positions.

The seed turns every bar's argmax into an order, so a model whose probabilities flicker pays
costs on every flicker. A policy keeps a side (flat, long, short) with hysteresis, a minimum
holding period and a cooldown, sizes a target position, and trades only when the target is
far enough from the position. Its settings, `PolicyParams`, are a pytree of numbers, so
`sweep_policies` runs thousands of policies x cost settings in one compiled call, and
`select_policy` picks one on validation predictions: by its objective on all validation bars
(flat), or nested, by its worst objective over consecutive validation windows
(`nested_windows_of`, `worst_window`), which `selection_null` reruns on rotated probabilities.

Per decision bar, with `p = (sell, hold, buy)`:

* Signal (`signal='margin'`): score `s = p_buy - p_sell`. flat -> long when `s > entry`,
  long -> flat when `s < exit` (`exit <= entry`); with `allow_short`, flat -> short when
  `s < -entry` and short -> flat when `s > -exit`. `signal='argmax'` is the seed's rule: long
  entry when the argmax (ties HOLD) is BUY with `p_buy >= entry`, long exit when it is SELL
  with `p_sell >= exit`; shorts mirror it.
* `min_hold`: an exit needs at least that many bars since the entry. `cooldown`: after an exit
  no entry for that many bars (with 0, an exit and the opposite entry may share a bar: a flip).
* Target on bars where the side's entry condition holds (entries and confirmations):
  `side * f * equity / fill_price`, `f` by `sizing`: `confidence` (`p` of the side times
  `max_position_pct`), `fixed` (`max_position_pct`), `vol_target` (`min(target_vol /
  sigma_annual_t, max_leverage)`, sigma from bars <= t; 0 where undefined). Between the
  thresholds the target is the current position: nothing trades.
* No-trade band: trade to the target only if `|target - position| * price > band * equity`;
  exits and flips always trade (a stub below the band would otherwise never close). With
  `trim=0` (the seed) a confirmation never reduces a position, it only raises it.
* Buys are capped at what cash can pay, commission included (no margin; a capped buy worth
  under 1e-6 of equity is skipped); short proceeds go to cash. The backtester's `sizing`,
  `confidence_threshold`, `allow_short` and `max_position_pct` are not used: the policy's
  fields replace them.

`seed_policy(threshold)` reproduces the seed's argmax + threshold backtest: the same fill bars,
quantities equal up to the order of floating-point operations (1e-12 relative in float64),
wherever the seed's buys are affordable, which holds for long-only runs with
`max_position_pct < 1 / (1 + commission)` (the seed skips an unaffordable buy, a policy caps it).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from himari_jax.backtest import engine as backtest
from himari_jax.constants import BUY, HOLD, PERIODS_PER_YEAR, SELL
from himari_jax.data import labels as labels_lib
from himari_jax.stats import cross_section, sharpe_inference
from himari_jax.stats import metrics as metrics_lib

SIGNALS = ('margin', 'argmax')
POLICY_SIZINGS = ('confidence', 'fixed', 'vol_target')
_ARGMAX = SIGNALS.index('argmax')
_CONFIDENCE, _FIXED = POLICY_SIZINGS.index('confidence'), POLICY_SIZINGS.index('fixed')
# 'sharpe_lcb': the one-sided 95 % lower confidence bound of the Sharpe ratio with its HAC
# error, `sharpe - LCB_Z * se`: a policy whose Sharpe ratio is noisier ranks lower.
SELECTION_OBJECTIVES = ('sharpe', 'sharpe_minus_turnover', 'sharpe_lcb')
LCB_Z = statistics.NormalDist().inv_cdf(0.95)
# Bar counter before any entry or exit, and its cap: above any min_hold or cooldown, and
# exact in float32.
_NEVER = 1e6
# A buy capped by cash is skipped when what cash still pays is below this fraction of equity.
_DUST = 1e-6
# Policies simulated together by default. From about 512 settings XLA:CPU splits the policy
# step's two large per-bar kernels over threads; on a shared, loaded CPU the threads wait on
# each other (and spin) at every bar, and a 10,000-policy sweep takes 1.7x the CPU time of
# unsplit batches of 256, with widely varying wall time (benchmarks/bench_backtest.py).
BATCH_SIZE = 256


@flax.struct.dataclass
class PolicyParams:
  """Policy settings as a pytree of scalars; give every leaf a leading axis to batch.

  Build with `make_policy` (validated), `seed_policy` or `make_policy_grid`. Flags are
  numbers: `signal` indexes `SIGNALS`, `sizing` indexes `POLICY_SIZINGS`, `allow_short` and `trim`
  are 0 / 1; `min_hold` and `cooldown` count bars.
  """

  signal: Any
  entry: Any
  exit: Any
  min_hold: Any
  cooldown: Any
  sizing: Any
  max_position_pct: Any
  target_vol: Any
  max_leverage: Any
  band: Any
  allow_short: Any
  trim: Any


def make_policy(*, signal: str = 'margin', entry: float = 0.2, exit: float = 0.0,
                min_hold: int = 0, cooldown: int = 0, sizing: str = 'confidence',
                max_position_pct: float = 0.10, target_vol: float = 0.05,
                max_leverage: float = 1.0, band: float = 0.0, allow_short: bool = False,
                trim: bool = True) -> PolicyParams:
  """Validated scalar `PolicyParams` (see the module docstring for each field).

  Raises:
    ValueError: naming the offending field (exit > entry, negative band, ...).
  """
  if signal not in SIGNALS:
    raise ValueError(f'policy setting signal must be one of {SIGNALS}, got {signal!r}')
  if sizing not in POLICY_SIZINGS:
    raise ValueError(f'policy setting sizing must be one of {POLICY_SIZINGS}, got {sizing!r}')
  policy = PolicyParams(
      signal=np.int32(SIGNALS.index(signal)), entry=np.float64(entry), exit=np.float64(exit),
      min_hold=np.float64(min_hold), cooldown=np.float64(cooldown),
      sizing=np.int32(POLICY_SIZINGS.index(sizing)), max_position_pct=np.float64(max_position_pct),
      target_vol=np.float64(target_vol), max_leverage=np.float64(max_leverage),
      band=np.float64(band), allow_short=np.int32(bool(allow_short)),
      trim=np.int32(bool(trim)))
  check_policy(policy)
  return policy


def seed_policy(threshold: float = 0.0, *, max_position_pct: float = 0.10,
                sizing: str = 'confidence', allow_short: bool = False) -> PolicyParams:
  """The seed's decisions as a policy: argmax + confidence threshold, never trims."""
  return make_policy(signal='argmax', entry=threshold, exit=threshold, sizing=sizing,
                     max_position_pct=max_position_pct, allow_short=allow_short, trim=False)


def check_policy(policy: PolicyParams) -> None:
  """Raises ValueError naming any invalid field; `policy` may be batched (numpy leaves)."""
  v = {k: np.asarray(x, dtype=np.float64) for k, x in vars(policy).items()}
  finite = {k: np.isfinite(x) for k, x in v.items()}
  whole = {k: finite[k] & (v[k] == np.round(v[k])) for k in ('min_hold', 'cooldown')}
  checks = (
      ('signal', np.isin(v['signal'], range(len(SIGNALS))), f'must index {SIGNALS}'),
      ('entry', (v['entry'] >= 0) & (v['entry'] <= 1), 'must be in [0, 1]'),
      ('exit', (v['exit'] >= -1) & (v['exit'] <= 1), 'must be in [-1, 1]'),
      ('min_hold', whole['min_hold'] & (v['min_hold'] >= 0) & (v['min_hold'] < _NEVER),
       f'must be a whole number in [0, {_NEVER:.0f})'),
      ('cooldown', whole['cooldown'] & (v['cooldown'] >= 0) & (v['cooldown'] < _NEVER),
       f'must be a whole number in [0, {_NEVER:.0f})'),
      ('sizing', np.isin(v['sizing'], range(len(POLICY_SIZINGS))), f'must index {POLICY_SIZINGS}'),
      ('max_position_pct', finite['max_position_pct'] & (v['max_position_pct'] > 0),
       'must be finite and > 0'),
      ('target_vol', finite['target_vol'] & (v['target_vol'] > 0), 'must be finite and > 0'),
      ('max_leverage', finite['max_leverage'] & (v['max_leverage'] > 0),
       'must be finite and > 0'),
      ('band', finite['band'] & (v['band'] >= 0), 'must be finite and >= 0'),
      ('allow_short', np.isin(v['allow_short'], (0, 1)), 'must be 0 or 1'),
      ('trim', np.isin(v['trim'], (0, 1)), 'must be 0 or 1'),
  )
  for name, ok, rule in checks:
    bad = ~np.broadcast_to(ok, np.shape(v[name]))
    if np.any(bad):
      raise ValueError(f'policy setting {name} {rule}, got {v[name][bad].flat[0]}')
  # An argmax policy's thresholds are probabilities; exit may not exceed entry in either mode.
  bad = (v['exit'] > v['entry']) | ((v['signal'] == _ARGMAX) & (v['exit'] < 0))
  if np.any(bad):
    i = np.flatnonzero(np.broadcast_to(bad, np.shape(v['exit'])).ravel())[0]
    raise ValueError(f'policy setting exit must be <= entry (and >= 0 for an argmax signal), '
                     f'got exit {np.ravel(v["exit"])[i]} with entry {np.ravel(v["entry"])[i]}')


def policy_to_dict(policy: PolicyParams) -> dict[str, Any]:
  """Scalar policy as plain Python values, flags decoded to names (for JSON and tables)."""
  return policy_table(jax.tree.map(np.atleast_1d, policy)).iloc[0].to_dict()


def policy_table(policy: PolicyParams) -> pd.DataFrame:
  """Batched policies (P,) as a DataFrame of P rows, one column per field."""
  columns = {k: np.atleast_1d(np.asarray(v)) for k, v in vars(policy).items()}
  columns['signal'] = np.asarray(SIGNALS, dtype=object)[columns['signal']]
  columns['sizing'] = np.asarray(POLICY_SIZINGS, dtype=object)[columns['sizing']]
  for name in ('allow_short', 'trim'):
    columns[name] = columns[name].astype(bool)
  for name in ('min_hold', 'cooldown'):
    columns[name] = columns[name].astype(np.int64)
  return pd.DataFrame(columns)


def stack_policies(policies: Sequence[PolicyParams]) -> PolicyParams:
  """Scalar (or batched) policies concatenated into one batched PolicyParams."""
  return jax.tree.map(lambda *leaves: np.concatenate([np.atleast_1d(x) for x in leaves]),
                      *policies)


def make_policy_grid(base: Mapping[str, Any] | None = None,
                     **axes: Sequence[Any]) -> PolicyParams:
  """Cartesian product of `make_policy` settings (the last axis varying fastest).

  Combinations with `exit > entry` are left out rather than raised, so a grid can cross
  every entry with every exit.

  Returns:
    PolicyParams whose leaves have shape (number of valid combinations,).
  """
  base = dict(base or {})
  names = list(axes)
  grid = []
  for combo in itertools.product(*(axes[name] for name in names)):
    settings = {**base, **dict(zip(names, combo, strict=True))}
    if settings.get('exit', 0.0) > settings.get('entry', 0.2):
      continue
    grid.append(make_policy(**settings))
  if not grid:
    raise ValueError('the policy grid is empty: every combination has exit > entry')
  return stack_policies(grid)


def default_grid(*, allow_short: bool = False, max_position_pct: float = 0.10,
                 target_vol: float = 0.05) -> PolicyParams:
  """The grid `select_policy` searches by default: 484 policies.

  480 margin policies (entry 0.1 .. 0.5, exit 0 .. 0.3 below entry, min_hold 0 / 6 / 24 / 72,
  cooldown 0 / 12, the three sizings, a 1 % band) and the seed at thresholds 0, 0.4, 0.5,
  0.6, so selection can keep the seed when nothing beats it.
  """
  margin = []
  for entry in (0.1, 0.2, 0.3, 0.4, 0.5):
    margin.append(make_policy_grid(
        dict(entry=entry, band=0.01, allow_short=allow_short,
             max_position_pct=max_position_pct, target_vol=target_vol,
             max_leverage=max_position_pct),
        exit=[round(entry - gap, 2) for gap in (0.0, 0.1, 0.2, 0.3)], min_hold=(0, 6, 24, 72),
        cooldown=(0, 12), sizing=POLICY_SIZINGS))
  seeds = [seed_policy(t, max_position_pct=max_position_pct, allow_short=allow_short)
           for t in (0.0, 0.4, 0.5, 0.6)]
  return stack_policies([*margin, *seeds])


def annualized_volatility(close: Any, *, window: int = 168,
                          periods_per_year: float = PERIODS_PER_YEAR) -> np.ndarray:
  """sigma_annual_t: std (ddof 1) of the last `window` one-bar log returns ending at bar t,
  times sqrt(periods_per_year); bars <= t only, NaN for the first `window` bars.

  Args:
    close: (N,) closes.

  Returns:
    (N,) float64.
  """
  return labels_lib.rolling_sigma(close, window=window) * np.sqrt(periods_per_year)


def probs_from_score(score: Any) -> np.ndarray:
  """(N,) scores in [-1, 1] (e.g. a scaled expected return) -> (N, 3) vectors whose margin
  `p_buy - p_sell` is the score, so a margin policy trades on the score itself."""
  score = np.asarray(score, np.float64)
  if score.ndim != 1 or not np.all(np.abs(score) <= 1):
    raise ValueError('score must be (N,) with every value in [-1, 1]')
  return np.stack([np.maximum(-score, 0), 1 - np.abs(score), np.maximum(score, 0)], axis=-1)


def _check_probs(probs: Any, num_bars: int) -> np.ndarray:
  probs = np.asarray(probs, np.float64)
  if probs.ndim not in (2, 3) or probs.shape[-1] != 3 or probs.shape[-2] != num_bars:
    raise ValueError(f'probs must be (N, 3) or (S, N, 3) with N = {num_bars} bars, got '
                     f'shape {probs.shape}')
  bad = ~(np.isfinite(probs).all(-1) & (probs >= 0).all(-1)
          & (np.abs(probs.sum(-1) - 1) <= 1e-3))
  if bad.any():
    where = np.argwhere(bad)[0]
    raise ValueError(f'probs must be finite, >= 0 and sum to 1: bar {where[-1]} is '
                     f'{probs[tuple(where)].tolist()}')
  return probs


def policy_signal(probs: Any, sigma_annual: Any) -> tuple[jax.Array, ...]:
  """The per-bar inputs a policy reads, computed once and shared by every policy.

  Args:
    probs: (..., N, 3) probabilities (sell, hold, buy).
    sigma_annual: (N,) annualised volatility for `vol_target` sizing (NaN / 0: undefined).

  Returns:
    (score, p_buy where the argmax (ties HOLD) is BUY else -inf, p_sell where it is SELL
    else -inf, p_sell, p_buy, 1 / sigma_annual or 0), each (..., N).
  """
  dtype = jnp.result_type(float)
  probs = jnp.asarray(probs, dtype)
  is_top = probs == jnp.max(probs, axis=-1, keepdims=True)
  action = jnp.where(jnp.sum(is_top, axis=-1) == 1, jnp.argmax(probs, axis=-1), HOLD)
  sigma = np.asarray(sigma_annual, np.float64)
  inv_sigma = np.where(np.isfinite(sigma) & (sigma > 0), 1 / np.where(sigma > 0, sigma, 1), 0.0)
  inv_sigma = jnp.broadcast_to(jnp.asarray(inv_sigma, dtype), probs.shape[:-1])
  p_sell, p_buy = probs[..., SELL], probs[..., BUY]
  return (p_buy - p_sell, jnp.where(action == BUY, p_buy, -jnp.inf),
          jnp.where(action == SELL, p_sell, -jnp.inf), p_sell, p_buy, inv_sigma)


# The policy state is one number, side * _SIDE + bars (exact integers in float32): each
# carried variable costs the scan a kernel per bar on CPU, and XLA:CPU recomputes the entry /
# exit logic inside every carried output that depends on it.
_SIDE = 2.0 ** 21


def _init_state(q: PolicyParams, like: jax.Array) -> jax.Array:
  """The state before bar 0: flat since long ago."""
  del q
  return jnp.full_like(like, _NEVER)


def state_side_and_bars(state: Any) -> tuple[int, int]:
  """A scalar policy state (`BarState.rule_state`) as (side: -1, 0 or 1, bars since the side
  last changed; `state_from_side_and_bars` inverts it exactly)."""
  state = float(state)
  side = int(state > 0.5 * _SIDE) - int(state < -0.5 * _SIDE)
  return side, int(round(state - side * _SIDE))


def state_from_side_and_bars(side: int, bars: float) -> jax.Array:
  """The scalar policy state of `side` held for `bars` bars, in the backtest's float dtype."""
  if side not in (-1, 0, 1) or not 0 <= bars <= _NEVER or bars != round(bars):
    raise ValueError(f'a policy state is a side in (-1, 0, 1) and whole bars in [0, '
                     f'{_NEVER:.0f}], got side {side}, bars {bars}')
  return jnp.asarray(side * _SIDE + bars, jnp.result_type(float))


def describe_state(state: Any, policy: PolicyParams) -> dict[str, Any]:
  """A scalar policy state for people: `side` ('long', 'flat', 'short'), `bars_in_side`
  (None: flat since before the first bar), and `min_hold_left` in a position or
  `cooldown_left` when flat (bars before an exit or an entry may happen)."""
  side, bars = state_side_and_bars(state)
  settings = policy_to_dict(policy)
  never = bars >= _NEVER
  described = {'side': ('short', 'flat', 'long')[side + 1],
               'bars_in_side': None if never else bars}
  if side:
    described['min_hold_left'] = max(0, settings['min_hold'] - bars)
  else:
    described['cooldown_left'] = 0 if never else max(0, settings['cooldown'] - bars)
  return described


def _decide_policy(cash, pos, signal, ref, inv_ref, p, inv, q, state):
  """Signed units to trade for one decision bar of policy `q` (module docstring), new state.

  One counter serves min_hold and cooldown: in a position it counts bars since the entry,
  flat it counts bars since the exit.
  """
  s, argmax_buy, argmax_sell, p_sell, p_buy, inv_sigma = signal
  # Every rule is `evidence > threshold`: `up` for a long entry or a short exit, `down` for
  # a short entry or a long exit. The argmax rule's `p >= t` is `p > t's predecessor`; its
  # evidence is -inf where the argmax is not that side. The thresholds depend only on the
  # policy, so XLA hoists them out of the scan.
  margin = q.signal < 0.5
  up = jnp.where(margin, s, argmax_buy)
  down = jnp.where(margin, -s, argmax_sell)
  below = lambda t: jnp.nextafter(t, jnp.full_like(t, -jnp.inf))  # noqa: E731
  entry = jnp.where(margin, q.entry, below(q.entry))
  exit_ = jnp.where(margin, -q.exit, below(q.exit))
  long_in = up > entry
  short_in = (q.allow_short > 0.5) & (down > entry)
  side = (state > 0.5 * _SIDE).astype(s.dtype) - (state < -0.5 * _SIDE).astype(s.dtype)
  bars = jnp.minimum(state - side * _SIDE + 1, _NEVER)
  exits = ((side != 0) & (jnp.where(side > 0, down, up) > exit_) & (bars >= q.min_hold))
  # After an exit the opposite entry may follow in the same bar only without a cooldown.
  can_enter = jnp.where(exits, q.cooldown == 0, (side == 0) & (bars > q.cooldown))
  enter_long = can_enter & long_in
  enter_short = can_enter & short_in
  new_side = jnp.where(enter_long, 1.0, jnp.where(enter_short, -1.0,
                                                  jnp.where(exits, 0.0, side)))
  # An exit and an entry of the same side never meet in one bar, so every event changes the
  # side and restarts the counter.
  state = new_side * _SIDE + jnp.where(new_side != side, 0.0, bars)
  side = new_side
  is_long = side > 0
  confirmed = jnp.where(is_long, long_in, (side < 0) & short_in)
  conf = jnp.where(is_long, p_buy, p_sell)
  fraction = backtest.position_fraction(
      q.sizing == _CONFIDENCE, conf, q.max_position_pct,
      jnp.where(q.sizing == _FIXED, q.max_position_pct,
                jnp.minimum(q.target_vol * inv_sigma, q.max_leverage)))
  budget = jnp.maximum(cash + pos * ref, 0.0)
  # Grouped as the seed's backtest groups it, so the seed policy's sizes match it closely.
  size = (budget * inv_ref) * (fraction * jnp.where(is_long, inv.buy, inv.sell))
  target = jnp.where(confirmed, jnp.where(is_long, size, -size),
                     jnp.where(side == 0, 0.0, pos))
  delta = target - pos
  sign_change = (pos != 0) & (jnp.sign(target) != jnp.sign(pos))
  reduces = (jnp.sign(target) == jnp.sign(pos)) & (jnp.abs(target) < jnp.abs(pos))
  trade = sign_change | ((jnp.abs(delta) * ref > q.band * budget) & ((q.trim > 0.5) | ~reduces))
  affordable = jnp.maximum(cash, 0.0) * inv_ref * inv.full_buy
  # Once cash is spent, a capped buy would trade rounding dust on every confirmation.
  dust = (delta > affordable) & (affordable * ref <= _DUST * budget)
  qty = jnp.where(trade & ~dust,
                  jnp.where(delta > 0, jnp.minimum(delta, affordable), delta), 0.0)
  return qty, state


POLICY_RULE = backtest.DecisionRule(
    pad=lambda dtype: (jnp.zeros((1,), dtype), jnp.full((1,), -jnp.inf, dtype),
                       jnp.full((1,), -jnp.inf, dtype), jnp.zeros((1,), dtype),
                       jnp.zeros((1,), dtype), jnp.zeros((1,), dtype)),
    init_state=_init_state,
    decide=_decide_policy)


def _sigma(prices: backtest.Prices, sigma_annual: Any, periods_per_year: float) -> np.ndarray:
  if sigma_annual is None:
    return annualized_volatility(prices.close, periods_per_year=periods_per_year)
  sigma_annual = np.asarray(sigma_annual, np.float64)
  if sigma_annual.shape != np.shape(prices.close):
    raise ValueError(f'sigma_annual must be (N,) like the prices, got {sigma_annual.shape}')
  return sigma_annual


def run_policy(prices: Any, probs: Any, policy: PolicyParams,
               params: backtest.BacktestParams, *, sigma_annual: Any = None,
               periods_per_year: float = PERIODS_PER_YEAR) -> backtest.BacktestResult:
  """One backtest of `policy` on probabilities, with the costs and fill timing of `params`.

  Args:
    prices: as in `backtest.run_backtest`, (N,) bars.
    probs: (N, 3) calibrated probabilities (sell, hold, buy) decided at each bar's close.
    policy: scalar PolicyParams; params: scalar BacktestParams.
    sigma_annual: (N,) annualised volatility for `vol_target` (default: 168-bar, from closes).

  Returns:
    backtest.BacktestResult of (N,) arrays; `confidence` is the probability of the side each
    fill trades towards (p_buy for buys, p_sell for sells, p_hold without a fill).
  """
  return continue_policy(prices, probs, policy, params, None, sigma_annual=sigma_annual,
                         periods_per_year=periods_per_year)[0]


def start_policy_state(prices: Any, policy: PolicyParams,
                       params: backtest.BacktestParams) -> backtest.BarState:
  """The state of `policy` before bar 0 of `prices` (`backtest.start_state`): flat since
  long ago."""
  return backtest.start_state(prices, params, POLICY_RULE, policy)


def continue_policy(prices: Any, probs: Any, policy: PolicyParams,
                    params: backtest.BacktestParams, start: backtest.BarState | None, *,
                    sigma_annual: Any = None, periods_per_year: float = PERIODS_PER_YEAR
                    ) -> tuple[backtest.BacktestResult, backtest.BarState]:
  """`run_policy` of bars that follow a run which ended in `start` (None: bar 0 of a run).

  Bars 0..N-1 split anywhere into runs that each continue from the state the previous one
  ended in give the same record as one run over all of them (`backtest.continue_backtest`).
  With `fill='next_open'` the first bar's `confidence` without a fill is 0.

  Returns:
    (BacktestResult of (N,) arrays, the BarState after the last bar).
  """
  prices = backtest.as_prices(prices)
  n = np.shape(prices.close)[0]
  probs = _check_probs(probs, n)
  if probs.ndim != 2:
    raise ValueError(f'run_policy takes one (N, 3) probability series, got {probs.shape}')
  backtest.check_inputs(prices, np.full(n, HOLD), np.zeros(n))
  backtest.check_params(params)
  check_policy(policy)
  signal = policy_signal(probs, _sigma(prices, sigma_annual, periods_per_year))
  return _simulate_policy(prices, signal, jnp.asarray(probs[:, HOLD]), params, policy, start)


@jax.jit
def _simulate_policy(prices, signal, p_hold, params, policy, start):
  record, executed, end = backtest.scan_bars(prices, signal, params, policy, track='result',
                                             rule=POLICY_RULE, start=start)
  _, _, _, p_sell, p_buy, _ = executed
  p_hold = jnp.where(params.fill_next_open > 0.5,
                     jnp.concatenate([jnp.zeros((1,), p_hold.dtype), p_hold[:-1]]), p_hold)
  qty = record[0]
  confidence = jnp.where(qty > 0, p_buy, jnp.where(qty < 0, p_sell, p_hold))
  return backtest.BacktestResult(*record, confidence=confidence), end


def sweep_policies(prices: Any, probs: Any, policies: PolicyParams,
                   params: backtest.BacktestParams, *, sigma_annual: Any = None,
                   signal_names: Sequence[str] | None = None,
                   periods_per_year: float = PERIODS_PER_YEAR, risk_free_rate: float = 0.0,
                   metrics: str = 'all', batch_size: int = BATCH_SIZE,
                   devices: Sequence[jax.Device] | None = None) -> pd.DataFrame:
  """Metrics of every (signal, policy, cost setting) triple in one compiled call.

  The (policy, cost setting) pairs are spread over every local device
  (`sharding.map_settings`), as in `backtest.sweep`.

  Args:
    prices: (N,) bars as in `backtest.run_backtest`.
    probs: (S, N, 3) or (N, 3) probabilities: one series per signal (model, ensemble).
    policies: PolicyParams batched to (P,) (e.g. `make_policy_grid`) or scalar.
    params: BacktestParams batched to (K,) (costs, capital, fill timing) or scalar.
    sigma_annual: (N,) annualised volatility for `vol_target` (default: 168-bar, from closes).
    metrics, batch_size, periods_per_year, risk_free_rate, devices: as in `backtest.sweep`
      (see `BATCH_SIZE` for the default batch size).

  Returns:
    DataFrame of S * P * K rows (signal-major, then policy, then cost setting): `signal`,
    `policy` (index into `policies`), the policy fields, `setting` (index into `params`), the
    backtest settings, then the metrics.
  """
  if metrics not in ('all', 'core'):
    raise ValueError(f"metrics must be 'all' or 'core', got {metrics!r}")
  prices = backtest.as_prices(prices)
  n = np.shape(prices.close)[0]
  probs = _check_probs(probs, n)
  probs = probs[None] if probs.ndim == 2 else probs
  backtest.check_inputs(prices, np.full(n, HOLD), np.zeros(n))
  backtest.check_params(params)
  check_policy(policies)
  policies = jax.tree.map(np.atleast_1d, policies)
  params = jax.tree.map(np.atleast_1d, params)
  num_signals = probs.shape[0]
  num_policies, num_costs = np.shape(policies.entry)[0], np.shape(params.sizing)[0]
  if not num_policies or not num_costs:
    raise ValueError(f'nothing to sweep: {num_policies} policies, {num_costs} cost settings')
  names = [str(s) for s in range(num_signals)] if signal_names is None else list(signal_names)
  if len(names) != num_signals:
    raise ValueError(f'{len(names)} signal_names for {num_signals} signals')
  which_policy = np.repeat(np.arange(num_policies), num_costs)
  which_cost = np.tile(np.arange(num_costs), num_policies)
  table = backtest.sweep_metrics(
      prices, policy_signal(probs, _sigma(prices, sigma_annual, periods_per_year)),
      jax.tree.map(lambda x: x[which_cost], params),
      jax.tree.map(lambda x: x[which_policy], policies), POLICY_RULE,
      periods_per_year=periods_per_year, risk_free_rate=risk_free_rate, metrics=metrics,
      batch_size=batch_size, devices=devices)
  policy_columns = policy_table(policies).iloc[which_policy].reset_index(drop=True)
  cost_columns = backtest.params_table(params).iloc[which_cost].reset_index(drop=True)
  cost_columns = cost_columns.drop(columns=['max_position_pct', 'confidence_threshold',
                                            'allow_short', 'sizing'])
  rows = pd.concat([policy_columns.add_prefix('policy.'), cost_columns], axis=1)
  rows.insert(0, 'policy', which_policy)
  rows.insert(len(policy_columns.columns) + 1, 'setting', which_cost)
  rows = pd.concat([rows] * num_signals, ignore_index=True)
  rows.insert(0, 'signal', np.repeat(names, num_policies * num_costs))
  return pd.concat([rows, pd.DataFrame(table)], axis=1)


@dataclasses.dataclass(frozen=True)
class PolicySelection:
  """What `select_policy` chose and what it tried.

  policy: the chosen scalar PolicyParams; index: its row in `table`; objective: the name of
  what was maximised; num_trials: policies tried (all count in the deflated Sharpe ratio of
  the winner on these validation bars, `selection.selection_deflated_sharpe`); table: the
  validation sweep, one row per policy, with `objective` and `eligible` columns;
  trial_sharpes: (num_trials,) per-period validation Sharpe ratios (NaN for policies that
  never traded); num_eligible: policies with at least `min_round_trips` round trips and a
  defined objective (0: none, and `policy` is the best of the ineligible ones: callers
  should not trade it); nested_windows: W, the validation windows the objective was judged
  on (1: all validation bars as one, `select_policy`); windows: their (start, stop) bars;
  window_round_trips: the round trips a policy needed in each window to be eligible.

  With W > 1 the table's `objective` and `eligible` are the nested ones (worst window,
  eligible on every window), `objective_window_<k>` each window's objective, and
  `flat_objective` / `flat_eligible` what a flat selection would have ranked by; the other
  metrics (`sharpe`, `num_trades`, ...) are of all validation bars in both cases.
  """

  policy: PolicyParams
  index: int
  objective: str
  num_trials: int
  table: pd.DataFrame
  trial_sharpes: np.ndarray
  num_eligible: int
  nested_windows: int = 1
  windows: tuple[tuple[int, int], ...] = ()
  window_round_trips: int = 0

  @property
  def rule(self) -> str:
    """How the policy was chosen, e.g. 'selection: nested over 3 validation windows,
    worst-window sharpe_lcb' (`selection_rule`)."""
    return selection_rule(self.objective, self.nested_windows)

  def window_objectives(self, index: int) -> np.ndarray:
    """(W,) the objective of grid row `index` on each validation window (W = 1: all bars)."""
    if self.nested_windows == 1:
      return self.table['objective'].to_numpy(np.float64)[[index]]
    columns = [f'objective_window_{k}' for k in range(self.nested_windows)]
    return self.table[columns].to_numpy(np.float64)[index]


def _check_selection(objective: str, turnover_penalty: float, min_round_trips: int,
                     params: backtest.BacktestParams) -> None:
  if objective not in SELECTION_OBJECTIVES:
    raise ValueError(f'objective must be one of {SELECTION_OBJECTIVES}, got {objective!r}')
  if not (np.isfinite(turnover_penalty) and turnover_penalty >= 0):
    raise ValueError(f'turnover_penalty must be finite and >= 0, got {turnover_penalty}')
  if not min_round_trips >= 0:
    raise ValueError(f'min_round_trips must be >= 0, got {min_round_trips}')
  if np.size(params.sizing) != 1:
    raise ValueError('select_policy takes one cost setting (scalar BacktestParams)')


@functools.partial(jax.jit, static_argnames=('batch_size',))
def _sharpe_variances(prices, signal, params, policies, lags, batch_size):
  """(P, S) HAC variances of the per-period Sharpe ratio of every (policy, signal) pair."""

  def one_policy(policy):
    def one_signal(one):
      equity, _ = backtest.scan_bars(prices, one, params, policy, track='all', rule=POLICY_RULE)
      returns = metrics_lib.period_returns(equity, params.initial_capital)
      return sharpe_inference.sharpe_variance_hac(returns, lags)
    return jax.vmap(one_signal)(signal)

  return jax.lax.map(one_policy, policies, batch_size=batch_size)


def policy_sharpe_errors(prices: Any, probs: Any, policies: PolicyParams,
                         params: backtest.BacktestParams, *, sigma_annual: Any = None,
                         lags: int | None = None, periods_per_year: float = PERIODS_PER_YEAR,
                         batch_size: int = BATCH_SIZE) -> np.ndarray:
  """HAC standard errors of every policy's Sharpe ratio (`sharpe_inference`), one compiled call.

  Args:
    prices: (N,) bars; probs: (S, N, 3) or (N, 3); policies: PolicyParams batched to (P,).
    params: scalar BacktestParams; sigma_annual: as in `sweep`.
    lags: Bartlett lags; None = Newey-West's rule of the number of bars
      (`cross_section.newey_west_lags`), one for every policy so one program serves them all.
    periods_per_year: annualisation of the errors.

  Returns:
    (S, P) annualised standard errors; NaN for a policy that never trades.
  """
  prices = backtest.as_prices(prices)
  n = np.shape(prices.close)[0]
  probs = _check_probs(probs, n)
  probs = probs[None] if probs.ndim == 2 else probs
  policies = jax.tree.map(np.atleast_1d, policies)
  lags = cross_section.newey_west_lags(n) if lags is None else int(lags)
  signal = policy_signal(probs, _sigma(prices, sigma_annual, periods_per_year))
  variances = _sharpe_variances(prices, signal, params, policies, lags,
                                max(1, batch_size // probs.shape[0]))
  return np.sqrt(np.asarray(variances, np.float64).T * periods_per_year)


def _scored_sweep(prices: Any, probs: np.ndarray, grid: PolicyParams,
                  params: backtest.BacktestParams, *, objective: str, turnover_penalty: float,
                  min_round_trips: int, sigma_annual: Any, periods_per_year: float,
                  batch_size: int) -> pd.DataFrame:
  """`sweep_policies` of (S, N, 3) probabilities x the grid with `turnover_per_year`, the
  selection's `objective` (NaN for a policy that never traded), `sharpe_se` for 'sharpe_lcb', and
  `eligible` (a defined objective and at least `min_round_trips` round trips): S * P rows,
  signal-major."""
  table = sweep_policies(prices, probs, grid, params, sigma_annual=sigma_annual,
                         periods_per_year=periods_per_year, batch_size=batch_size)
  table['turnover_per_year'] = table['turnover'] * periods_per_year / len(
      backtest.as_prices(prices).close)
  score = table['sharpe'].to_numpy()
  if objective == 'sharpe_minus_turnover':
    score = score - turnover_penalty * table['turnover_per_year'].to_numpy()
  if objective == 'sharpe_lcb':
    table['sharpe_se'] = policy_sharpe_errors(
        prices, probs, grid, params, sigma_annual=sigma_annual,
        periods_per_year=periods_per_year, batch_size=batch_size).ravel()
    score = score - LCB_Z * table['sharpe_se'].to_numpy()
  table['objective'] = score
  table['eligible'] = np.isfinite(score) & (table['num_round_trips'].to_numpy()
                                            >= min_round_trips)
  return table


def _winners(objective: np.ndarray, eligible: np.ndarray) -> np.ndarray:
  """(S, P) objective and eligibility -> (S,) index of each row's best eligible policy
  (earliest of ties), -1 where none is eligible."""
  ranked = np.where(eligible, objective, -np.inf)
  return np.where(eligible.any(axis=1), np.argmax(ranked, axis=1), -1)


# Nested selection: a validation window needs at least this many bars (a day of hourly bars,
# so its Sharpe ratio and HAC error rest on more than a handful of returns). Too many round
# trips asked of a window is not refused: no policy is eligible, as in a flat selection.
MIN_WINDOW_BARS = 24


def selection_rule(objective: str, nested_windows: int = 1) -> str:
  """The name of a selection rule, as the reports print it."""
  if nested_windows == 1:
    return f'selection: flat over the validation bars, {objective}'
  return (f'selection: nested over {nested_windows} validation windows, worst-window '
          f'{objective}')


def nested_windows_of(num_bars: int, nested_windows: int,
                      min_round_trips: int = 0) -> tuple[list[slice], int]:
  """The validation windows of nested selection and the round trips each must make.

  W consecutive, equal, non-overlapping windows of floor(N / W) bars that end at the last
  validation bar (the first N mod W < W bars are left out); each needs
  ceil(min_round_trips / W) round trips. W = 1: all N bars, min_round_trips.

  Raises:
    ValueError: naming `nested_windows` when it is not a whole number >= 1, or leaves windows
      under `MIN_WINDOW_BARS` bars.
  """
  if not (float(nested_windows) == int(nested_windows) and nested_windows >= 1):
    raise ValueError(f'policy.nested_windows must be a whole number >= 1, got '
                     f'{nested_windows!r}')
  windows = int(nested_windows)
  if windows == 1:
    return [slice(0, num_bars)], min_round_trips
  if num_bars // windows < MIN_WINDOW_BARS:
    raise ValueError(
        f'policy.nested_windows={windows} splits {num_bars} validation bars into windows of '
        f'{num_bars // windows} bars; each needs at least {MIN_WINDOW_BARS}: use at most '
        f'{max(1, num_bars // MIN_WINDOW_BARS)} windows (1: flat selection)')
  per_window = -(-min_round_trips // windows)
  length = num_bars // windows
  first = num_bars - windows * length
  return [slice(first + k * length, first + (k + 1) * length) for k in range(windows)], \
      per_window


def worst_window(objective: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Nested selection's score: each policy's worst window.

  The worst window rather than the median: with three windows the median is one window, and
  a policy whose edge sits in one lucky stretch can win it with a flat or losing window
  beside it; the worst window only ranks high a policy that earned its objective in every
  window. A window where a policy never traded counts 0 (a flat book, as `auto_decision`
  scores it).

  Args:
    objective: (W, ...) per-window objectives (NaN: never traded there).
    eligible: (W, ...) per-window eligibility.

  Returns:
    ((...) the worst window's objective, NaN for a policy that never traded in any window;
    (...) eligible on every window).
  """
  finite = np.isfinite(objective)
  worst = np.min(np.where(finite, objective, 0.0), axis=0)
  return np.where(finite.any(axis=0), worst, np.nan), np.all(eligible, axis=0)


def _window_prices(prices: backtest.Prices, window: slice) -> backtest.Prices:
  return backtest.Prices(np.asarray(prices.open)[window], np.asarray(prices.close)[window])


def _window_scores(prices: backtest.Prices, probs: np.ndarray, grid: PolicyParams,
                   params: backtest.BacktestParams, windows: Sequence[slice], *,
                   objective: str, turnover_penalty: float, min_round_trips: int,
                   sigma: np.ndarray, periods_per_year: float,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(S, N, 3) probabilities -> (W, S, P) objective and eligibility on each window: one
  compiled sweep of every (signal, policy) per window, each window from flat."""
  num_signals = probs.shape[0]
  scores, eligible = [], []
  for window in windows:
    table = _scored_sweep(_window_prices(prices, window), probs[:, window], grid, params,
                          objective=objective, turnover_penalty=turnover_penalty,
                          min_round_trips=min_round_trips, sigma_annual=sigma[window],
                          periods_per_year=periods_per_year, batch_size=batch_size)
    scores.append(table['objective'].to_numpy(np.float64).reshape(num_signals, -1))
    eligible.append(table['eligible'].to_numpy().reshape(num_signals, -1))
  return np.stack(scores), np.stack(eligible)


def select_policy(prices: Any, probs: Any, params: backtest.BacktestParams, *,
                  grid: PolicyParams | None = None, objective: str = 'sharpe',
                  turnover_penalty: float = 0.0, min_round_trips: int = 0,
                  sigma_annual: Any = None, periods_per_year: float = PERIODS_PER_YEAR,
                  nested_windows: int = 1, batch_size: int = BATCH_SIZE) -> PolicySelection:
  """Sweeps a policy grid on validation bars and picks the best by a named objective.

  Only what is passed is seen: give the validation split's prices and calibrated
  probabilities (the bars calibration used), never test bars.

  Args:
    prices: (N,) validation bars; probs: (N, 3) their probabilities.
    params: scalar BacktestParams with the costs the test will pay.
    grid: policies to try (default `default_grid(allow_short=...)` with the backtest's
      `allow_short`).
    objective: 'sharpe' (net Sharpe ratio), 'sharpe_minus_turnover' (net Sharpe minus
      `turnover_penalty` times turnover per year, traded notional over mean equity) or
      'sharpe_lcb' (the one-sided 95 % lower bound of the net Sharpe ratio with its HAC
      error, `policy_sharpe_errors`).
    min_round_trips: a policy with fewer closed round trips on these bars is not eligible.
    sigma_annual: (N,) volatility for `vol_target`, from bars <= t (default from the closes).
    nested_windows: W. 1: the objective on all validation bars (flat selection). W > 1:
      nested selection: the bars split into W consecutive, equal windows
      (`nested_windows_of`), every policy is run on each window from flat, and the best
      eligible policy by its worst window's objective (`worst_window`) wins; eligible means
      eligible on every window, with ceil(min_round_trips / W) round trips in each. One
      compiled sweep per window.

  Returns:
    PolicySelection: the best eligible policy; ties go to the earlier policy of the grid.
    With none eligible (`num_eligible == 0`), the best by objective of the others (the
    first policy if none traded).

  Raises:
    ValueError: on a bad objective, penalty or minimum, or a `nested_windows` the bars
      cannot hold (`nested_windows_of`).
  """
  _check_selection(objective, turnover_penalty, min_round_trips, params)
  prices = backtest.as_prices(prices)
  n = len(prices.close)
  probs = _check_probs(probs, n)
  windows, per_window = nested_windows_of(n, nested_windows, min_round_trips)
  if grid is None:
    grid = default_grid(allow_short=bool(np.asarray(params.allow_short).item()))
  table = _scored_sweep(prices, probs, grid, params, objective=objective,
                        turnover_penalty=turnover_penalty, min_round_trips=min_round_trips,
                        sigma_annual=sigma_annual, periods_per_year=periods_per_year,
                        batch_size=batch_size)
  if len(windows) > 1:
    by_window, eligible_by_window = _window_scores(
        prices, probs[None] if probs.ndim == 2 else probs, grid, params, windows,
        objective=objective, turnover_penalty=turnover_penalty, min_round_trips=per_window,
        sigma=_sigma(prices, sigma_annual, periods_per_year),
        periods_per_year=periods_per_year, batch_size=batch_size)
    table = table.rename(columns={'objective': 'flat_objective', 'eligible': 'flat_eligible'})
    for k in range(len(windows)):
      table[f'objective_window_{k}'] = by_window[k].ravel()
    nested, nested_eligible = worst_window(by_window, eligible_by_window)
    table['objective'], table['eligible'] = nested.ravel(), nested_eligible.ravel()
  score, eligible = table['objective'].to_numpy(), table['eligible'].to_numpy()
  index = int(_winners(score[None], eligible[None])[0])
  if index < 0:
    index = max(0, int(_winners(score[None], np.isfinite(score)[None])[0]))
  return PolicySelection(
      policy=jax.tree.map(lambda x: np.asarray(x)[index], grid), index=index,
      objective=objective, num_trials=len(table), table=table,
      trial_sharpes=table['sharpe'].to_numpy() / np.sqrt(periods_per_year),
      num_eligible=int(eligible.sum()), nested_windows=len(windows),
      windows=tuple((w.start, w.stop) for w in windows), window_round_trips=per_window)


@dataclasses.dataclass(frozen=True)
class SelectionNull:
  """The selection rerun on probabilities rotated in time (`selection_null`).

  offsets: (R,) bars each rotation shifted the probabilities by, each at least min_offset
  from the real alignment; winners: (R,) the grid index each rerun chose (-1: none
  eligible);
  sharpe: (R,) those winners' annualised validation Sharpe ratios (NaN for -1); objective:
  (R, P) every policy's objective in each rerun (with nested selection, the worst window's,
  as the real selection ranks by); nested_windows: W of the rule rerun.
  """

  min_offset: int
  offsets: np.ndarray
  winners: np.ndarray
  sharpe: np.ndarray
  objective: np.ndarray
  nested_windows: int = 1


def rotation_offsets(num_bars: int, num_rotations: int, min_offset: int,
                     seed: int = 0) -> np.ndarray:
  """(R,) circular shifts drawn uniformly from [min_offset, num_bars - min_offset]: at least
  `min_offset` bars away from the real alignment either way.

  Raises:
    ValueError: if the series is shorter than `2 * min_offset` bars.
  """
  if num_rotations < 1 or min_offset < 1:
    raise ValueError(f'num_rotations ({num_rotations}) and min_offset ({min_offset}) must '
                     'be >= 1')
  if num_bars < 2 * min_offset:
    raise ValueError(f'a rotation null needs at least 2 * min_offset = {2 * min_offset} bars '
                     f'to rotate by {min_offset} or more either way; got {num_bars}')
  rng = np.random.default_rng(seed)
  return rng.integers(min_offset, num_bars - min_offset, num_rotations, endpoint=True)


def selection_null(prices: Any, probs: Any, params: backtest.BacktestParams, *,
                   grid: PolicyParams, objective: str = 'sharpe',
                   turnover_penalty: float = 0.0, min_round_trips: int = 0,
                   sigma_annual: Any = None,
                   periods_per_year: float = PERIODS_PER_YEAR, num_rotations: int = 40,
                   min_offset: int = 336, seed: int = 0, nested_windows: int = 1,
                   batch_size: int = BATCH_SIZE) -> SelectionNull:
  """`select_policy`'s search with the signal destroyed: the same grid and objective on the
  probabilities rotated in time by R random offsets (prices, volatility and costs stay),
  every rotation in one compiled sweep.

  A rotation keeps everything about the probabilities (their distribution, flicker, holding
  periods) but their alignment with prices, so its winner's validation Sharpe ratio is what
  the search finds in noise of this model's own kind (SPEC 11).

  With `nested_windows` > 1 each rotation (of all validation bars) is split into the same
  windows and ranked by the same nested rule as the real search; the winners' Sharpe ratios
  are then those of all validation bars, as the real winner's (`selection_null_summary`).

  Args:
    prices, probs, params, grid, objective, turnover_penalty, min_round_trips,
      sigma_annual, periods_per_year, nested_windows, batch_size: as given to
      `select_policy`.
    num_rotations: R.
    min_offset: the smallest shift in bars (`rotation_offsets`).
    seed: draws the offsets.

  Returns:
    SelectionNull.
  """
  _check_selection(objective, turnover_penalty, min_round_trips, params)
  prices = backtest.as_prices(prices)
  n = len(prices.close)
  probs = _check_probs(probs, n)
  windows, per_window = nested_windows_of(n, nested_windows, min_round_trips)
  offsets = rotation_offsets(n, num_rotations, min_offset, seed)
  rotated = np.stack([np.roll(probs, int(k), axis=0) for k in offsets])
  rows = np.arange(num_rotations)
  if len(windows) == 1:
    table = _scored_sweep(prices, rotated, grid, params, objective=objective,
                          turnover_penalty=turnover_penalty, min_round_trips=min_round_trips,
                          sigma_annual=sigma_annual, periods_per_year=periods_per_year,
                          batch_size=batch_size)
    score = table['objective'].to_numpy().reshape(num_rotations, -1)
    sharpe = table['sharpe'].to_numpy().reshape(num_rotations, -1)
    winners = _winners(score, table['eligible'].to_numpy().reshape(num_rotations, -1))
    winner_sharpe = sharpe[rows, np.maximum(winners, 0)]
  else:
    sigma = _sigma(prices, sigma_annual, periods_per_year)
    score, eligible = worst_window(*_window_scores(
        prices, rotated, grid, params, windows, objective=objective,
        turnover_penalty=turnover_penalty, min_round_trips=per_window, sigma=sigma,
        periods_per_year=periods_per_year, batch_size=batch_size))
    winners = _winners(score, eligible)
    winner_sharpe = _winner_sharpes(prices, rotated, grid, winners, params, sigma=sigma,
                                    periods_per_year=periods_per_year, batch_size=batch_size)
  return SelectionNull(min_offset=min_offset, offsets=offsets, winners=winners,
                       objective=score, nested_windows=len(windows),
                       sharpe=np.where(winners >= 0, winner_sharpe, np.nan))


def _winner_sharpes(prices: backtest.Prices, probs: np.ndarray, grid: PolicyParams,
                    winners: np.ndarray, params: backtest.BacktestParams, *, sigma: np.ndarray,
                    periods_per_year: float, batch_size: int) -> np.ndarray:
  """(S,) the Sharpe ratio on all N bars of each signal's winner (NaN for -1): one sweep of
  the S signals x the distinct winners."""
  chosen = np.unique(winners[winners >= 0])
  if not chosen.size:
    return np.full(len(winners), np.nan)
  table = sweep_policies(prices, probs, jax.tree.map(lambda x: np.asarray(x)[chosen], grid),
                         params, sigma_annual=sigma, periods_per_year=periods_per_year,
                         batch_size=batch_size)
  sharpe = table['sharpe'].to_numpy(np.float64).reshape(len(winners), chosen.size)
  column = np.searchsorted(chosen, np.maximum(winners, chosen[0]))
  return np.where(winners >= 0, sharpe[np.arange(len(winners)), column], np.nan)


def policy_cost_sensitivity(prices: Any, probs: Any, policy: PolicyParams,
                            params: backtest.BacktestParams, *,
                            multipliers: Sequence[float] = backtest.COST_MULTIPLIERS,
                            sigma_annual: Any = None,
                            periods_per_year: float = PERIODS_PER_YEAR) -> pd.DataFrame:
  """Net Sharpe ratio and return of one policy at multiples of the configured costs, one
  sweep call. Returns a DataFrame with `cost_multiplier`, `sharpe`, `total_return`,
  `num_trades`."""
  table = sweep_policies(prices, probs, policy, backtest.cost_grid(params, multipliers),
                         sigma_annual=sigma_annual, periods_per_year=periods_per_year,
                         metrics='core')
  return backtest.sensitivity_frame(table, multipliers)
