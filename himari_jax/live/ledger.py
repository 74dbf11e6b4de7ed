"""The paper-trading ledger: one CSV row per decided bar plus a JSON state, written so that a
restart resumes at the bar after the last recorded one and nothing is decided twice.

Each row holds what the next bar continues from (`decider.Decider.row`): the portfolio, the
decision rule's side and bars held, and the decision still to fill at the next open; the
state holds the same for the last bar, so a restart carries on exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from himari_jax import locks

LEDGER_CSV = 'ledger.csv'
LEDGER_STATE = 'state.json'
LEDGER_LOCK = 'ledger.lock'  # held by the one process that decides into the ledger
_LEDGER_COLUMNS = (
    'time', 'open', 'high', 'low', 'close', 'volume', 'action', 'p_sell', 'p_hold', 'p_buy',
    'confidence', 'sigma', 'side', 'bars_in_side', 'fill_qty', 'fill_price', 'commission',
    'slippage', 'position', 'cash', 'equity', 'decided_at')


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
  state: dict | None = None  # state.json as read when opened (None: a new ledger)

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
           log: Callable[[str], None] = print, *, new: bool = False) -> Ledger:
    """The ledger in `directory` (a new one if it has none), locked until `close`; refuses
    other settings (members, policy, costs, data, ...) with one line naming each difference.
    `new`: start a new ledger, the old files moved to `archive/<time>/` first.

    Raises:
      locks.LockError: another process has it open (the message names its PID).
      LedgerError: it was started with other settings, or its files disagree.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    lock = locks.FolderLock(os.path.join(directory, LEDGER_LOCK), f'the ledger {directory}')
    try:
      return cls._open_locked(directory, settings, lock, log, new)
    except BaseException:
      lock.release()
      raise

  def close(self) -> None:
    """Releases the ledger's lock; another process may then open it."""
    if self.lock is not None:
      self.lock.release()

  @classmethod
  def _open_locked(cls, directory: str, settings: dict, lock: locks.FolderLock,
                   log: Callable[[str], None], new: bool) -> Ledger:
    settings = json.loads(json.dumps(settings))
    ledger = cls(directory, settings, pd.DataFrame(columns=_LEDGER_COLUMNS[1:]), lock)
    if new:
      ledger._archive(log)
    if not os.path.exists(ledger.state_path):
      if os.path.exists(ledger.csv_path):
        raise LedgerError(f'{ledger.csv_path} exists without {LEDGER_STATE}; move it away or '
                          'use another --ledger folder')
      return ledger
    with open(ledger.state_path) as f:
      state = json.load(f)
    if state['settings'] != settings:
      before, now = _flatten(state['settings']), _flatten(settings)
      changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
      raise LedgerError(
          f'{ledger.state_path} was started with other settings ({", ".join(changed)}: '
          f'{[before.get(k) for k in changed]} vs {[now.get(k) for k in changed]}); continue '
          'with the same ones, start a new ledger here (--new_ledger; the old one is archived) '
          'or use another --ledger folder')
    ledger.rows = ledger._read_rows()
    ledger.state = state
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

  def _archive(self, log: Callable[[str], None]) -> None:
    """Moves the ledger's files to `archive/<UTC time>/`, leaving the folder to a new one."""
    files = [p for p in (self.csv_path, self.state_path) if os.path.exists(p)]
    if not files:
      return
    stamp = pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S%fZ')
    archive = os.path.join(self.directory, 'archive', stamp)
    os.makedirs(archive)
    for path in files:
      os.replace(path, os.path.join(archive, os.path.basename(path)))
    log(f'ledger: the previous ledger was moved to {archive}; starting a new one')

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


def _flatten(settings: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested settings as {'policy.entry': 0.2, ...}, so a difference names its field."""
  flat = {}
  for key, value in settings.items():
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat
