"""Decisions on the latest closed bar, and paper trading on live bars.

A *decider* maps a window of the latest closed bars to one decision; `model_decider` builds
one from trained checkpoints (calibrated members, combined by an ensemble strategy), tests use
simple deterministic ones:

  decide(frame: (history bars) OHLCV DataFrame) -> (action, probs (3,), confidence, target)

`target` is the position the decision asks for as a signed fraction of equity (SPEC 6: a BUY
targets `confidence * max_position_pct` under seed sizing, a SELL 0, or the short of the same
size with shorting) and NaN for HOLD, which keeps the position.

Bars come from a `sources.BarSource` (see `live.sources`). `paper_trade` is the loop: for
each newly closed bar it decides, simulates the fill with the backtester (`live.ledger.simulate`)
and appends one row to a `live.ledger.Ledger` that survives restarts: a bar is decided once, a
restart resumes at the bar after the last recorded one, and bars missed while stopped are
caught up in order. Gapped or stale data stops the loop with an error that names the missing
bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants
from himari_jax.backtest import engine as backtest_lib
from himari_jax.data import features as features_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.inference import ensemble as ensemble_lib
from himari_jax.inference import members as members_lib
from himari_jax.inference import predict as predict_lib
from himari_jax.live import ledger as ledger_lib
from himari_jax.live import sources


class Decision(NamedTuple):
  """One decision: the bar's open time, action (0 SELL, 1 HOLD, 2 BUY), calibrated probs (3,),
  confidence in [0, 1] and the target position (fraction of equity; NaN = keep)."""

  time: pd.Timestamp
  action: int
  probs: np.ndarray
  confidence: float
  target: float


Decider = Callable[[pd.DataFrame], tuple[int, Any, float, float]]


def target_position(action: int, confidence: float, params: backtest_lib.BacktestParams
                    ) -> float:
  """The position a decision asks for under the backtester's sizing (fraction of equity).

  BUY: `confidence * max_position_pct` (sizing 'confidence'), `max_position_pct` ('fixed') or
  1 ('full'); SELL: 0, or minus the same size with `allow_short`; HOLD (or a BUY / SELL below
  the confidence threshold): NaN, the position is kept.
  """
  settings = backtest_lib.params_to_dict(params)
  if action == constants.HOLD or confidence < settings['confidence_threshold']:
    return math.nan
  size = {'confidence': confidence * settings['max_position_pct'],
          'fixed': settings['max_position_pct'], 'full': 1.0}[settings['sizing']]
  if action == constants.BUY:
    return float(size)
  return -float(size) if settings['allow_short'] else 0.0


# ----------------------------------------------------------------------------- sources


# ----------------------------------------------------------------------------- deciding


def window_ending_at(df: pd.DataFrame, bar: pd.Timestamp, history: int,
                     interval: pd.Timedelta, source: str) -> pd.DataFrame:
  """The `history` bars up to and including `bar`, as a decider receives them; gaps are
  filled with flat zero-volume bars, as backtests fill them."""
  window = df[df.index <= bar]
  if data_lib.find_gaps(window, interval).count:
    window = data_lib.fill_missing_bars(window, interval, source=source)
  window = window.iloc[-history:]
  if len(window) < history:
    raise data_lib.DataError(f'{source}: {len(window)} bars up to {bar}, a decision needs '
                             f'{history}; give more history')
  return window


def decide_bar(decide: Decider, window: pd.DataFrame) -> Decision:
  """Runs a decider on a window and checks what it returns."""
  action, probs, confidence, target = decide(window)
  probs = np.asarray(probs, np.float64)
  if int(action) not in (constants.SELL, constants.HOLD, constants.BUY) or \
      probs.shape != (3,) or not 0.0 <= float(confidence) <= 1.0:
    raise ValueError(f'the decider returned action={action!r}, probs={probs.tolist()}, '
                     f'confidence={confidence!r}; expected 0/1/2, 3 probabilities and [0, 1]')
  return Decision(window.index[-1], int(action), probs, float(confidence), float(target))


def latest_decision(source: sources.BarSource, decide: Decider, history: int,
                    now: pd.Timestamp | None = None) -> tuple[Decision, int]:
  """The decision for the latest closed bar of `source`, and how many unclosed bars were
  left out (the forming bar of a live feed, or a CSV's last row exported mid-bar)."""
  now = pd.Timestamp.now(tz='UTC') if now is None else now
  df = source.bars(None, history)
  closed = sources.closed_bars(df, source.interval, now)
  if not len(closed):
    raise data_lib.DataError(f'{source.name}: no closed bar by {now:%Y-%m-%d %H:%M} UTC '
                             f'(the first bar opens {df.index[0]})')
  window = window_ending_at(closed, closed.index[-1], history, source.interval, source.name)
  return decide_bar(decide, window), len(df) - len(closed)


def format_decision(decision: Decision, interval: pd.Timedelta, source: str) -> list[str]:
  """Console lines for a decision."""
  names = constants.ACTION_NAMES
  target = ('keep the current position' if math.isnan(decision.target)
            else f'{decision.target:+.2%} of equity')
  probs = '  '.join(f'{n} {p:.3f}' for n, p in zip(names, decision.probs, strict=True))
  return [f'{source}: bar {decision.time:%Y-%m-%d %H:%M} UTC, closed '
          f'{decision.time + interval:%Y-%m-%d %H:%M} UTC',
          f'  action      {names[decision.action]} (confidence {decision.confidence:.3f})',
          f'  calibrated  {probs}',
          f'  target      {target}']


def model_decider(checkpoints: Sequence[str], config: Any, history: int,
                  log: Callable[[str], None] = print) -> Decider:
  """A decider from trained members and a `configs/backtest.py` config.

  Each member is loaded and calibrated once (on the validation split of its own training
  data, as the backtest does), then each decision scores only the window's last bar.

  Raises:
    ValueError: if `history` bars are too few for the members' feature warm-up and context.
  """

  params = backtest_lib.params_from_config(config)
  weights = [float(w) for w in config_lib.split_list(config.get('weights', '') or '')] or None
  members = [members_lib.load_member(members_lib.resolve_path(p), config.which)
             for p in checkpoints]
  contexts = [int(m.config.train.context_length) for m in members]
  needed = max(predict_lib.first_available_bar(t) for t in contexts) + 1
  if history < needed:
    raise ValueError(f'history={history} bars is too short: these models need {needed} bars '
                     'per decision')
  calibrations = []
  for path, loaded in zip(checkpoints, members, strict=True):
    calibration, summary = members_lib.fit_member_calibration(loaded, config.calibration)
    log(f'member {path}: step {loaded.step}, calibration {summary["mode"]}')
    calibrations.append(calibration)

  def decide(frame: pd.DataFrame) -> tuple[int, np.ndarray, float, float]:
    probs = []
    for loaded, calibration, context in zip(members, calibrations, contexts, strict=True):
      feats = loaded.normalizer.apply(features_lib.compute_features(frame))
      logits = predict_lib.predict_logits_from_features(
          loaded.params, loaded.model_config, feats, context, batch_size=1,
          bars=np.array([len(frame) - 1]))[-1:]
      probs.append(np.asarray(calibration.apply(logits), np.float32))
    actions, confidence = ensemble_lib.combine(np.stack(probs), config.strategy,
                                               threshold=config.confidence_threshold,
                                               weights=weights)
    action, conf = int(actions[0]), float(confidence[0])
    mean = np.average(np.stack(probs)[:, 0], axis=0, weights=weights)
    return action, mean, conf, target_position(action, conf, params)

  return decide


# ------------------------------------------------------------------------------- ledger


# ------------------------------------------------------------------------ paper trading


def paper_trade(source: sources.BarSource, decide: Decider, ledger: ledger_lib.Ledger,
                params: backtest_lib.BacktestParams, *, history: int,
                max_bars: int | None = None, max_polls: int | None = None,
                poll_delay: float = 5.0, retry_every: float = 30.0, stale_after: float = 600.0,
                clock: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz='UTC'),
                sleep: Callable[[float], None] = time.sleep,
                log: Callable[[str], None] = print) -> int:
  """Follows `source`: decides each newly closed bar, simulates its fill, records it.

  A new ledger starts at the latest closed bar. Each poll takes every bar closed since the
  ledger's last one, in order (so bars missed while stopped are caught up), then sleeps
  until `poll_delay` seconds after the next bar closes; while the next bar is late it polls
  every `retry_every` seconds.

  Args:
    source: where bars come from.
    decide: the decider; sees the `history` bars ending at the bar decided.
    ledger: where decisions and fills go (see `ledger_lib.Ledger`).
    params: backtest settings (costs, sizing, fill timing) the fills are simulated with.
    history: bars per decision window.
    max_bars, max_polls: stop after deciding that many bars / polling that many times.
    stale_after: seconds after a bar should have closed before the feed counts as stale.
    clock, sleep: the time source and the wait (tests pass simulated ones).

  Returns:
    The number of bars decided.

  Raises:
    sources.FeedError: when the feed skips a bar (a gap after the last recorded bar), is stale, or
      cannot be reached after retries. The ledger keeps every bar decided before.
  """
  interval = source.interval
  decided = polls = 0
  while True:
    now = clock()
    last = ledger.last_bar
    start = None if last is None else last + interval - interval * (history - 1)
    df = source.bars(start, history)
    closed = sources.closed_bars(df, interval, now)
    new = closed if last is None else closed[closed.index > last]
    _check_unrevised(closed, ledger, source.name)
    if last is None:
      if not len(closed):
        raise sources.FeedError(f'{source.name}: no closed bar by {now}')
      new = closed.iloc[-1:]  # a new ledger starts at the latest closed bar
    expected = new.index[0] if last is None else last + interval
    times = new.index
    if len(times):
      steps = np.diff(np.r_[expected.value - interval.value, times.asi8])
      jump = np.flatnonzero(steps != interval.value)
      if jump.size:
        i = int(jump[0])
        missing = (times[i - 1] if i else last) + interval
        raise sources.FeedError(f'{source.name}: bar {missing:%Y-%m-%d %H:%M} UTC is missing (the '
                        f'next bar served is {times[i]:%Y-%m-%d %H:%M}); refusing to trade '
                        'across a gap. The ledger ends at '
                        f'{ledger.last_bar or "its start"}; rerun once the feed has the bar')
    for bar in times:
      if max_bars is not None and decided >= max_bars:
        return decided
      _record_bar(source, decide, ledger, params, closed, bar, history, now, log)
      decided += 1
    polls += 1
    if (max_bars is not None and decided >= max_bars) or (
        max_polls is not None and polls >= max_polls):
      return decided
    due = ledger.last_bar + 2 * interval  # the close of the next bar
    late = (now - due).total_seconds()
    if late > stale_after:
      raise sources.FeedError(
          f'{source.name}: stale feed, bar {ledger.last_bar + interval:%Y-%m-%d %H:%M} UTC '
          f'should have closed at {due:%H:%M} but the latest closed bar at '
          f'{now:%Y-%m-%d %H:%M:%S} UTC is {ledger.last_bar:%Y-%m-%d %H:%M}; check the '
          'source (or the clock)')
    sleep(retry_every if late >= 0 else -late + poll_delay)


def _check_unrevised(closed: pd.DataFrame, ledger: ledger_lib.Ledger, source: str) -> None:
  """Refuses a feed that serves other prices for a bar already decided on: the bar was not
  final when it was decided (a clock ahead of the exchange) or the exchange revised it."""
  both = closed.index.intersection(ledger.rows.index)
  if not len(both):
    return
  served = closed.loc[both, list(data_lib.COLUMNS)].to_numpy(np.float64)
  recorded = ledger.rows.loc[both, list(data_lib.COLUMNS)].to_numpy(np.float64)
  changed = np.flatnonzero((served != recorded).any(axis=1))
  if changed.size:
    t = both[changed[0]]
    raise sources.FeedError(f'{source}: bar {t:%Y-%m-%d %H:%M} UTC was decided on as '
                    f'{recorded[changed[0]].tolist()} but is now served as '
                    f'{served[changed[0]].tolist()} (open, high, low, close, volume); it was '
                    'not closed when decided, or the exchange revised it. Check the clock; '
                    f'the ledger in {ledger.directory} keeps the decision as made')


def _record_bar(source: sources.BarSource, decide: Decider, ledger: ledger_lib.Ledger,
                params: backtest_lib.BacktestParams, closed: pd.DataFrame, bar: pd.Timestamp,
                history: int, now: pd.Timestamp, log: Callable[[str], None]) -> None:
  """Decides `bar`, replays the ledger with it through the backtester and appends its row."""
  window = window_ending_at(closed, bar, history, source.interval, source.name)
  decision = decide_bar(decide, window)
  row = closed.loc[[bar]].copy()
  row['action'] = constants.ACTION_NAMES[decision.action]
  row['p_sell'], row['p_hold'], row['p_buy'] = (float(p) for p in decision.probs)
  row['confidence'], row['target'] = decision.confidence, decision.target
  result = ledger_lib.simulate(pd.concat([ledger.rows, row]) if len(ledger.rows) else row, params)
  for name in ('fill_qty', 'fill_price', 'commission', 'slippage', 'position', 'cash',
               'equity'):
    row[name] = float(getattr(result, name)[-1])
  row['decided_at'] = now.isoformat()
  state = {'bars': len(ledger.rows) + 1, 'last_bar': bar.isoformat(),
           'next_bar': (bar + source.interval).isoformat(),
           'cash': row['cash'].iloc[0], 'position': row['position'].iloc[0],
           'equity': row['equity'].iloc[0], 'updated_at': now.isoformat()}
  next_open = backtest_lib.params_to_dict(params)['fill'] == 'next_open'
  if next_open and decision.action != constants.HOLD:
    state['pending'] = {'action': row['action'].iloc[0], 'confidence': decision.confidence,
                        'fills_at': f'open of {bar + source.interval}'}
  ledger.append(row, state)
  fill = (f'filled {row["fill_qty"].iloc[0]:+.6g} @ {row["fill_price"].iloc[0]:.2f}'
          if row['fill_qty'].iloc[0] else 'no fill')
  log(f'{bar:%Y-%m-%d %H:%M} {row["action"].iloc[0]:<4} conf {decision.confidence:.3f} '
      f'{fill}; equity {row["equity"].iloc[0]:.2f}')
