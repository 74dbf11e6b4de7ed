"""Whether bars are what the rest of the package assumes, checked in one place before they are
trained on (`input_pipeline.prepare_data`), backtested (`backtest.evaluate`) or traded
(`live.sources.check_source`):

* the bar interval, inferred from the data (`ohlcv.infer_freq`), must be the one the caller
  annualises or decides by: 5-minute bars annualised as hourly ones would inflate every
  annual figure twelvefold, so a mismatch is refused (`DataError`, naming the setting);
* gaps filled with flat bars are reported: how many bars, how many gaps, the longest and
  where it starts (in the console and in the report returned, which callers store in their
  JSON results and run metadata);
* a single bar whose close moves more than `max_bar_move` (default 50 %) from the previous
  close is reported naming the bar, or refused when asked (`refuse_large_moves`): a price
  off by 1000x gives an absurd CAGR otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from himari_jax.data import ohlcv

MAX_BAR_MOVE = 0.5  # |close / previous close - 1| above this is implausible for one bar
_YEAR = pd.Timedelta(days=365)


def interval_of(periods_per_year: float) -> pd.Timedelta:
  """The bar length `periods_per_year` bars a year annualise: a year of hourly bars -> 1 hour."""
  return _YEAR / periods_per_year


def _text(interval: pd.Timedelta) -> str:
  return ohlcv.freq_string(interval)


def check_interval(df: pd.DataFrame, expected: pd.Timedelta, *, source: str,
                   setting: str) -> pd.Timedelta:
  """The bars' interval (their most common spacing), refused unless it is `expected`.

  Args:
    df: OHLCV bars with a DatetimeIndex.
    expected: the bar length the caller assumes.
    source: how messages name the data (a file, a dataset name).
    setting: what expects `expected`, as the user would change it
      ('--config.periods_per_year=...', '--interval=1h').

  Raises:
    ohlcv.DataError: one line naming the data, both intervals and the setting.
  """
  interval = ohlcv.infer_freq(df.index)
  if len(df) > 1 and abs(interval - expected) > expected * 0.01:
    raise ohlcv.DataError(
        f'{source}: the bars are {_text(interval)} apart but {setting} means '
        f'{_text(expected)} bars; resample the data to {_text(expected)} bars or change '
        'the setting')
  return interval


def large_moves(df: pd.DataFrame, max_bar_move: float) -> list[tuple[pd.Timestamp, float]]:
  """(bar time, close / previous close - 1) of each bar that moves more than `max_bar_move`."""
  close = df['close'].to_numpy(np.float64)
  moves = close[1:] / close[:-1] - 1.0
  where = np.flatnonzero(np.abs(moves) > max_bar_move)
  return [(df.index[i + 1], float(moves[i])) for i in where]


def check_bars(df: pd.DataFrame, *, source: str, expected_interval: pd.Timedelta,
               interval_setting: str, max_bar_move: float = MAX_BAR_MOVE,
               refuse_large_moves: bool = False, setting_prefix: str = '--config.',
               log: Callable[[str], None] = print,
               warn: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Checks the bars of `source` (see the module docstring) and reports what it found.

  Args:
    df: OHLCV bars as `ohlcv.load_ohlcv` gives them (`attrs['gaps']`: the file's gaps as
      read; `attrs['filled_bars']`: bars `fill_missing_bars` inserted).
    source: how messages name the data.
    expected_interval, interval_setting: as `check_interval`'s `expected` and `setting`.
    max_bar_move: the largest plausible |close / previous close - 1| of one bar.
    refuse_large_moves: refuse bars beyond `max_bar_move` instead of warning.
    setting_prefix: where `max_bar_move` and `refuse_large_moves` are set, for messages
      ('--config.' or '--config.data.').
    log: where the gap line goes; warn: where the large-move line goes (default `log`).

  Returns:
    JSON-able {'interval', 'gaps' (`GapReport.to_dict()` plus 'filled_bars'),
    'large_moves': [[time, move], ...], 'max_bar_move'}.

  Raises:
    ohlcv.DataError: another interval than `expected_interval`; with `refuse_large_moves`,
      a bar that moves more than `max_bar_move`, naming the bar.
  """
  warn = warn or log
  interval = check_interval(df, expected_interval, source=source, setting=interval_setting)
  gaps = dict(df.attrs.get('gaps') or ohlcv.find_gaps(df).to_dict())
  filled = int(df.attrs.get('filled_bars', 0))
  if gaps['count']:
    start, longest = max(gaps['gaps'], key=lambda g: g[1])
    what = (f'filled with {filled} flat zero-volume bars' if filled
            else 'not filled (the bars run on across them)')
    log(f'{source}: {gaps["missing_bars"]} missing bar(s) in {gaps["count"]} gap(s), {what}; '
        f'the longest, {longest} bars, from {pd.Timestamp(start):%Y-%m-%d %H:%M} UTC')
  moves = large_moves(df, max_bar_move)
  if moves:
    when, move = max(moves, key=lambda m: abs(m[1]))
    line = (f'{source}: {len(moves)} bar(s) move more than {max_bar_move:.0%} from the previous '
            f'close; the largest, {move:+.1%}, at bar {when:%Y-%m-%d %H:%M} UTC')
    if refuse_large_moves:
      raise ohlcv.DataError(f'{line}; fix the data, or raise {setting_prefix}max_bar_move if '
                            'the move is real')
    warn(f'{line}: check the data (refuse such data with '
         f'{setting_prefix}refuse_large_moves=True)')
  return {'interval': _text(interval), 'gaps': {**gaps, 'filled_bars': filled},
          'large_moves': [[t.isoformat(), m] for t, m in moves], 'max_bar_move': max_bar_move}
