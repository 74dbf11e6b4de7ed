"""The paper-trading ledger: one CSV row per decided bar plus a JSON state, written so that a
restart resumes at the bar after the last recorded one and nothing is decided twice.

`simulate` replays the recorded decisions through the backtester, so fills, costs and equity
are exactly what a backtest of the same decisions gives.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from himari_jax import constants, locks
from himari_jax.backtest import engine as backtest_lib

_PAD_BARS = 256  # replays are padded to a multiple of this, so jit compiles rarely
LEDGER_CSV = 'ledger.csv'
LEDGER_STATE = 'state.json'
LEDGER_LOCK = 'ledger.lock'  # held by the one process that decides into the ledger
_LEDGER_COLUMNS = (
    'time', 'open', 'high', 'low', 'close', 'volume', 'action', 'p_sell', 'p_hold', 'p_buy',
    'confidence', 'target', 'fill_qty', 'fill_price', 'commission', 'slippage', 'position',
    'cash', 'equity', 'decided_at')


class LedgerError(RuntimeError):
  """A ledger folder does not match its settings or its files disagree."""


@dataclasses.dataclass
class Ledger:
  """A paper-trading record in `directory`: `ledger.csv` (one row per decided bar: the bar,
  the decision, the fill and the portfolio after it) and `state.json` (the settings the
  ledger was started with, the last bar, the portfolio and the pending order).

  The CSV row of a bar is written (and fsynced) before the state, which is replaced
  atomically: a crash between the two leaves rows the state does not count yet, which
  `open` accepts (they are complete decisions); a torn last line is dropped, its bar is
  decided again. A process that refuses a ledger (other settings, files that disagree) has
  written nothing to it. One process at a time: `open` takes `ledger.lock` (released by `close` or
  when the process ends, however it ends), so two loops never decide the same bars.
  """

  directory: str
  settings: dict
  rows: pd.DataFrame
  lock: locks.FolderLock | None = dataclasses.field(default=None, repr=False)

  @property
  def csv_path(self) -> str:
    return os.path.join(self.directory, LEDGER_CSV)

  @property
  def state_path(self) -> str:
    return os.path.join(self.directory, LEDGER_STATE)

  @property
  def last_bar(self) -> pd.Timestamp | None:
    return self.rows.index[-1] if len(self.rows) else None

  @classmethod
  def open(cls, directory: str | os.PathLike, settings: dict,
           log: Callable[[str], None] = print) -> Ledger:
    """The ledger in `directory` (a new one if it has none), locked until `close`.

    Raises:
      locks.LockError: another process has it open (the message names its PID).
      LedgerError: it was started with other settings, or its files disagree.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    lock = locks.FolderLock(os.path.join(directory, LEDGER_LOCK), f'the ledger {directory}')
    try:
      return cls._open_locked(directory, settings, lock, log)
    except BaseException:
      lock.release()
      raise

  def close(self) -> None:
    """Releases the ledger's lock; another process may then open it."""
    if self.lock is not None:
      self.lock.release()

  @classmethod
  def _open_locked(cls, directory: str, settings: dict, lock: locks.FolderLock,
                   log: Callable[[str], None]) -> Ledger:
    settings = json.loads(json.dumps(settings))
    ledger = cls(directory, settings, pd.DataFrame(columns=_LEDGER_COLUMNS[1:]), lock)
    if not os.path.exists(ledger.state_path):
      if os.path.exists(ledger.csv_path):
        raise LedgerError(f'{ledger.csv_path} exists without {LEDGER_STATE}; move it away or '
                          'use another --ledger folder')
      return ledger
    with open(ledger.state_path) as f:
      state = json.load(f)
    if state['settings'] != settings:
      changed = sorted(k for k in settings.keys() | state['settings'].keys()
                       if settings.get(k) != state['settings'].get(k))
      raise LedgerError(
          f'{ledger.state_path} was started with other settings ({", ".join(changed)}: '
          f'{[state["settings"].get(k) for k in changed]} vs {[settings.get(k) for k in changed]}'
          '); continue with the same ones or use another --ledger folder')
    ledger.rows = ledger._read_rows()
    recorded = int(state['bars'])
    if len(ledger.rows) < recorded:
      raise LedgerError(f'{ledger.csv_path} has {len(ledger.rows)} bars but {LEDGER_STATE} '
                        f'counts {recorded}; the CSV was edited or truncated')
    if recorded and ledger.rows.index[recorded - 1] != pd.Timestamp(state['last_bar']):
      raise LedgerError(f'{ledger.csv_path} row {recorded + 1} is {ledger.rows.index[recorded - 1]}'
                        f' but {LEDGER_STATE} says {state["last_bar"]}; the files disagree')
    if len(ledger.rows) > recorded:
      log(f'ledger: {len(ledger.rows) - recorded} bar(s) were recorded after the last state '
          'save (the loop stopped in between); keeping them')
    return ledger

  def _read_rows(self) -> pd.DataFrame:
    """The whole rows of the CSV; a torn last line is left out here (the file is not touched:
    `open` may still refuse the ledger) and cut off by the next `append`."""
    with open(self.csv_path, 'rb') as f:
      payload = f.read()
    payload = payload[:payload.rfind(b'\n') + 1]
    if not payload:
      return pd.DataFrame(columns=_LEDGER_COLUMNS[1:])
    rows = pd.read_csv(io.BytesIO(payload))
    times = pd.to_datetime(rows.pop('time'), utc=True)
    rows.index = pd.DatetimeIndex(times, name='time').as_unit('ns')
    return rows

  def _cut_torn_line(self) -> None:
    """Cuts a torn last line (a process killed while writing it) off the CSV."""
    if not os.path.exists(self.csv_path):
      return
    with open(self.csv_path, 'r+b') as f:
      payload = f.read()
      if payload and not payload.endswith(b'\n'):
        f.truncate(payload.rfind(b'\n') + 1)

  def append(self, rows: pd.DataFrame, state: dict) -> None:
    """Appends `rows` (indexed by bar time, columns as `_LEDGER_COLUMNS`), then saves `state`."""
    self._cut_torn_line()
    new_file = not os.path.exists(self.csv_path) or not os.path.getsize(self.csv_path)
    out = rows.reset_index().rename(columns={'index': 'time'})
    out['time'] = [t.isoformat() for t in rows.index]
    # repr writes the shortest text that reads back as the same double.
    text = out[list(_LEDGER_COLUMNS)].to_csv(index=False, header=new_file, lineterminator='\n',
                                             float_format=lambda v: repr(float(v)))
    with open(self.csv_path, 'a') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    self.rows = pd.concat([self.rows, rows]) if len(self.rows) else rows.copy()
    tmp = self.state_path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'settings': self.settings, **state}, f, indent=2)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.state_path)


def simulate(rows: pd.DataFrame, params: backtest_lib.BacktestParams
             ) -> backtest_lib.BacktestResult:
  """The backtest of every decided bar of a ledger (open, close, action, confidence), as
  (N,) numpy arrays. Padded with HOLD bars to a multiple of `_PAD_BARS` (the simulation is
  causal, so they change nothing before them) so that jit compiles once per 256 bars."""
  n = len(rows)
  pad = -n % _PAD_BARS
  opens = np.r_[rows['open'].to_numpy(np.float64), np.full(pad, rows['close'].iloc[-1])]
  closes = np.r_[rows['close'].to_numpy(np.float64), np.full(pad, rows['close'].iloc[-1])]
  ids = rows['action'].map(constants.ACTION_NAMES.index).to_numpy(np.int32)
  actions = np.r_[ids, np.full(pad, constants.HOLD, np.int32)]
  confidence = np.r_[rows['confidence'].to_numpy(np.float64), np.zeros(pad)]
  result = backtest_lib.run_backtest(backtest_lib.Prices(opens, closes), actions, confidence,
                                     params)
  return type(result)(**{k: np.asarray(v)[:n] for k, v in vars(result).items()})
