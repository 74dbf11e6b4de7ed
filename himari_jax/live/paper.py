"""Decisions on the latest closed bar, and paper trading on live bars.

Both decide with a `backtest.decider.Decider`, the object launch/backtest.py runs: members ->
calibration -> ensemble -> decision policy -> fills, with the backtest's costs and sizing.
`latest_decision` runs it over the latest closed bars from flat and reports the last bar.
`paper_trade` follows a `sources.BarSource`: each newly closed bar is one `Decider.step` from
the state the previous bar left (position, the policy's side and bars held, the order still
to fill), appended as one row to a `live.ledger.Ledger` that survives restarts: a bar is
decided once, a restart resumes at the bar after the last recorded one from the state
recorded with it, and bars missed while stopped are caught up in order. Fills, positions and
equity are those of a backtest of the same bars (`Decider.run`). Gapped or stale data stops the
loop with an error that names the missing bar.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants
from himari_jax.backtest import decider as decider_lib
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import evaluate
from himari_jax.backtest import policy as policy_lib
from himari_jax.backtest import report as report_lib
from himari_jax.data import ohlcv as data_lib
from himari_jax.inference import members as members_lib
from himari_jax.live import ledger as ledger_lib
from himari_jax.live import sources

# The fields of a ledger row that the next bar continues from (`Decider.state_from_row`).
CARRY_FIELDS = ('open', 'close', 'action', 'p_sell', 'p_hold', 'p_buy', 'confidence', 'sigma',
                'side', 'bars_in_side', 'position', 'cash')


def window_ending_at(df: pd.DataFrame, bar: pd.Timestamp, history: int,
                     interval: pd.Timedelta, source: str, min_bars: int) -> pd.DataFrame:
  """The last `history` bars up to and including `bar` (all of them where fewer), as a
  decider receives them; gaps are filled with flat zero-volume bars, as backtests fill them.

  Raises:
    data.DataError: fewer than `min_bars` bars.
  """
  window = df[df.index <= bar]
  if data_lib.find_gaps(window, interval).count:
    window = data_lib.fill_missing_bars(window, interval, source=source)
  window = window.iloc[-history:]
  if len(window) < min_bars:
    raise data_lib.DataError(f'{source}: {len(window)} bars up to {bar}, a decision needs '
                             f'{min_bars}; give more history')
  return window


def latest_decision(source: sources.BarSource, decider: decider_lib.Decider, history: int,
                    now: pd.Timestamp | None = None) -> tuple[dict[str, Any], int]:
  """The decision for the latest closed bar of `source`: the decider run from flat over the
  last `history` closed bars, its last bar as a ledger row (`Decider.row`, plus `time`, open
  and close); and how many unclosed bars were left out (the forming bar of a live feed, or a
  CSV's last row exported mid-bar)."""
  now = pd.Timestamp.now(tz='UTC') if now is None else now
  df = source.bars(None, history)
  closed = sources.closed_bars(df, source.interval, now)
  if not len(closed):
    raise data_lib.DataError(f'{source.name}: no closed bar by {now:%Y-%m-%d %H:%M} UTC '
                             f'(the first bar opens {df.index[0]})')
  window = window_ending_at(closed, closed.index[-1], history, source.interval, source.name,
                            decider.min_bars)
  step = decider.last_step(window)
  row = {'time': step.time, **window.iloc[-1][['open', 'close']].to_dict(), **decider.row(step)}
  return row, len(df) - len(closed)


def format_decision(row: Mapping[str, Any], interval: pd.Timedelta, source: str,
                    params: backtest_lib.BacktestParams) -> list[str]:
  """Console lines for a decision (`latest_decision`'s row)."""
  probs = '  '.join(f'{n} {row[f"p_{n.lower()}"]:.3f}' for n in constants.ACTION_NAMES)
  exposure = row['position'] * row['close'] / row['equity']
  side = decider_lib.SIDES[int(row['side'])]
  pending = (" (this bar's decision fills at the next open)"
             if backtest_lib.params_to_dict(params)['fill'] == 'next_open' else '')
  return [f'{source}: bar {row["time"]:%Y-%m-%d %H:%M} UTC, closed '
          f'{row["time"] + interval:%Y-%m-%d %H:%M} UTC',
          f'  action      {row["action"]} (confidence {row["confidence"]:.3f})',
          f'  calibrated  {probs}',
          f'  position    {side}, {exposure:+.2%} of equity after this bar{pending}']


def ledger_summary(ledger: ledger_lib.Ledger, policy: Mapping[str, Any]) -> list[str]:
  """The paper-trading summary: the policy line (`report.policy_line`, as the backtest
  prints it), then the ledger's bars, fills, equity and side."""
  lines = [report_lib.policy_line(policy)]
  rows = ledger.rows
  if not len(rows):
    return [*lines, f'ledger {ledger.csv_path}: no bar decided yet']
  capital = ledger.settings.get('backtest', {}).get('initial_capital')
  equity = float(rows['equity'].iloc[-1])
  gain = '' if not capital else f' ({equity / capital - 1:+.2%} on {capital:,.0f})'
  side = decider_lib.SIDES[int(rows['side'].iloc[-1])]
  lines.append(f'ledger {ledger.csv_path}: {len(rows)} bar(s) {rows.index[0]:%Y-%m-%d %H:%M} '
               f'.. {rows.index[-1]:%Y-%m-%d %H:%M} UTC, {int((rows["fill_qty"] != 0).sum())} '
               f'fill(s), equity {equity:,.2f}{gain}; {side} after the last bar')
  return lines


def restore_state(decider: decider_lib.Decider, ledger: ledger_lib.Ledger
                  ) -> backtest_lib.BarState | None:
  """The state the ledger's last bar left (None for a new ledger): state.json's `carry`, or the
  last CSV row where the loop stopped between writing the row and the state.

  Raises:
    ledger.LedgerError: state.json's state and the CSV row of its bar disagree.
  """
  if not len(ledger.rows):
    return None
  row = ledger.rows.iloc[-1][list(CARRY_FIELDS)].to_dict()
  saved = ledger.state or {}
  if int(saved.get('bars', -1)) != len(ledger.rows):
    return decider.state_from_row(row)
  carry = saved['carry']
  differ = [k for k in CARRY_FIELDS if not _same(carry.get(k), row[k])]
  if differ:
    raise ledger_lib.LedgerError(
        f'{ledger.state_path}: the state of bar {ledger.last_bar} differs from its row in '
        f'{ledger.csv_path} ({", ".join(differ)}); the files disagree')
  return decider.state_from_row(carry)


def _same(saved: Any, recorded: Any) -> bool:
  """A state.json value (None for NaN) equals a CSV value."""
  if isinstance(recorded, str) or isinstance(saved, str):
    return saved == recorded
  recorded = float(recorded)
  return (saved is None and math.isnan(recorded)) or (saved is not None
                                                      and float(saved) == recorded)


# ------------------------------------------------------------------------ paper trading


def paper_trade(source: sources.BarSource, decider: decider_lib.Decider,
                ledger: ledger_lib.Ledger, *, history: int,
                max_bars: int | None = None, max_polls: int | None = None,
                poll_delay: float = 5.0, retry_every: float = 30.0, stale_after: float = 600.0,
                clock: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz='UTC'),
                sleep: Callable[[float], None] = time.sleep,
                log: Callable[[str], None] = print) -> int:
  """Follows `source`: decides and fills each newly closed bar (`Decider.step`), records it.

  A new ledger starts at the latest closed bar; a ledger with bars continues from the state
  its last bar left (`restore_state`). Each poll takes every bar closed since the ledger's
  last one, in order (so bars missed while stopped are caught up), then sleeps until
  `poll_delay` seconds after the next bar closes; while the next bar is late it polls every
  `retry_every` seconds.

  Args:
    source: where bars come from.
    decider: decides and fills; sees the (at most) `history` bars ending at the bar decided.
    ledger: where decisions and fills go (see `ledger_lib.Ledger`).
    history: bars per decision window (fewer at the start of the feed).
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
  state = restore_state(decider, ledger)
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
      state = _record_bar(source, decider, ledger, closed, bar, history, now, state, log)
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


def _record_bar(source: sources.BarSource, decider: decider_lib.Decider,
                ledger: ledger_lib.Ledger, closed: pd.DataFrame, bar: pd.Timestamp,
                history: int, now: pd.Timestamp, state: backtest_lib.BarState | None,
                log: Callable[[str], None]) -> backtest_lib.BarState:
  """Decides and fills `bar` from `state`, appends its row; returns the state after it."""
  window = window_ending_at(closed, bar, history, source.interval, source.name,
                            decider.min_bars)
  step = decider.step(window, state)
  row = closed.loc[[bar]].copy()
  for name, value in decider.row(step).items():
    row[name] = value
  row['decided_at'] = now.isoformat()
  values = row.iloc[0]
  carry = {k: values[k] if k == 'action' else None if math.isnan(values[k]) else float(values[k])
           for k in CARRY_FIELDS}
  saved = {'bars': len(ledger.rows) + 1, 'last_bar': bar.isoformat(),
           'next_bar': (bar + source.interval).isoformat(), 'cash': float(values['cash']),
           'position': float(values['position']), 'equity': float(values['equity']),
           'policy_state': decider.describe_state(step.state), 'carry': carry,
           'updated_at': now.isoformat()}
  if backtest_lib.params_to_dict(decider.params)['fill'] == 'next_open':
    saved['pending'] = {'decided_at_bar': bar.isoformat(),
                        'fills_at': f'open of {bar + source.interval}'}
  ledger.append(row, saved)
  fill = (f'filled {values["fill_qty"]:+.6g} @ {values["fill_price"]:.2f}'
          if values['fill_qty'] else 'no fill')
  log(f'{bar:%Y-%m-%d %H:%M} {values["action"]:<4} conf {values["confidence"]:.3f} '
      f'{decider_lib.SIDES[int(values["side"])]:<5} {fill}; equity {values["equity"]:.2f}')
  return step.state


# ------------------------------------------------------------------------------ set-up


def load_decider(config: ml_collections.ConfigDict, *, checkpoints: Sequence[str] | None,
                 policy_file: str | None, asset: str | None = None,
                 log: Callable[[str], None] = print
                 ) -> tuple[decider_lib.Decider, evaluate.PolicyChoice, dict[str, Any]]:
  """The decider a backtest of `config` trades, for live decisions; its first log line names
  the decision rule.

  The policy comes from `policy_file` (a backtest's policy.json: its members, calibration,
  ensemble, costs and policy replace `config`'s) or from `config.policy` as the backtest
  reads it ('select' and 'auto' choose on the members' validation bars as it does).

  Args:
    checkpoints: members (None: the policy file's, else `config.checkpoints`).

  Returns:
    (the decider, how its policy was chosen, the ledger settings that identify it).

  Raises:
    ValueError: `checkpoints` are not the members the policy file was chosen for.
  """
  chosen_for = None
  if policy_file:
    choice, chosen_for = evaluate.read_policy_file(policy_file, config)
    log(f'policy: {report_lib.policy_line(choice.summary)} (from {policy_file})')
    checkpoints = checkpoints or [m['path'] for m in chosen_for]
  else:
    mode = config.policy.mode
    rule = (report_lib.policy_line(evaluate.choose_policy(config).summary)
            if mode in ('seed', 'fixed') else
            f"config.policy.mode={mode}: chosen on the members' validation bars, as "
            'launch/backtest.py chooses it')
    log(f'policy: no --policy given; {rule}. Trade what a backtest chose with '
        f'--policy=<its outdir>/{evaluate.POLICY_JSON}')
    checkpoints = checkpoints or config_lib.split_list(config.checkpoints)
  paths = [members_lib.resolve_path(p) for p in checkpoints]
  weights = decider_lib.weights_from_config(config, len(paths))
  scorer = decider_lib.load_scorer(paths, config, asset=asset, log=log)
  members = scorer.identity()
  if chosen_for is not None:
    key = lambda ms: [(os.path.realpath(m['path']), m['step']) for m in ms]  # noqa: E731
    if key(members) != key(chosen_for):
      raise ValueError(f'{policy_file} was chosen for members {_members_text(chosen_for)}, not '
                       f'{_members_text(members)}; pass no --checkpoints (or the same ones), '
                       'or backtest these members to choose their policy')
  else:
    choice = evaluate.choose_member_policy(config, scorer, weights, log=log)
    if config.policy.mode not in ('seed', 'fixed'):
      log(f'policy: {report_lib.policy_line(choice.summary)}')
  decider = decider_lib.Decider.from_config(config, choice.policy, scorer, weights)
  settings = {
      'members': members, 'strategy': config.strategy, 'weights': weights,
      'confidence_threshold': config.confidence_threshold,
      'calibration': config.calibration.to_dict(),
      'predict_batch_size': scorer.batch_size,
      'policy': {'mode': choice.mode, **(policy_lib.policy_to_dict(choice.policy)
                                         if choice.policy is not None else {})},
      'vol_window': decider.vol_window,
      'backtest': backtest_lib.params_to_dict(decider.params)}
  return decider, choice, settings


def _members_text(members: Sequence[Mapping[str, Any]]) -> str:
  return '[' + ', '.join(f'{m["path"]} (step {m["step"]})' for m in members) + ']'
