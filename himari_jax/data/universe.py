"""Many coins on one hourly grid: OHLCV files -> an aligned `Panel` (SPEC section 12).

`load_universe` reads every OHLCV file of a folder (or a glob, or a list of paths) with
`ohlcv.load_ohlcv`, so any layout that loader reads works, gzip included, and puts the coins
side by side on one grid of bar open times. Coins list at different dates, exchanges halt for
maintenance and data end: the panel says where each coin can be traded instead of filling.

* Prices and volume are NaN wherever a coin has no bar: before its first bar, inside a gap
  (missing hours) and after its last bar. Nothing is forward-filled.
* `available[t, a]` is False there, and also on zero-volume bars. On Binance those are flat
  placeholders around halts (open = high = low = close = the previous close): no trade took
  place, so none may be simulated. Their recorded prices are kept (they mark a held position
  at the previous close, which is what they are).

Symbols come from the file names, the text before the first `_`, `-` or `.` in upper case
(`btc_usdt_1h_binance_2017_2022.csv.gz` -> `BTC`), or from a mapping of file name to symbol.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from himari_jax.data import ohlcv

# Files a folder is searched for; anything else in it (a README) is left alone.
_SUFFIXES = ('.csv', '.csv.gz', '.json', '.json.gz')
_SYMBOL = re.compile(r'[^_\-.]+')

PathSpec = str | os.PathLike | Sequence[str | os.PathLike]


@dataclasses.dataclass(frozen=True, eq=False)
class Panel:
  """Bars x assets on one grid of bar open times.

  Attributes:
    index: (bars,) UTC DatetimeIndex of bar open times, evenly spaced by `freq`.
    symbols: (assets,) one name per column of the arrays.
    open, high, low, close, volume: (bars, assets) float64, NaN where the coin has no bar.
    available: (bars, assets) bool, True where the coin has a bar with volume > 0.
    freq: the bar spacing.
    sources: (assets,) the file each column was read from.
  """

  index: pd.DatetimeIndex
  symbols: tuple[str, ...]
  open: np.ndarray
  high: np.ndarray
  low: np.ndarray
  close: np.ndarray
  volume: np.ndarray
  available: np.ndarray
  freq: pd.Timedelta
  sources: tuple[str, ...]

  @property
  def num_bars(self) -> int:
    return len(self.index)

  @property
  def num_assets(self) -> int:
    return len(self.symbols)

  def column(self, symbol: str) -> int:
    """The array column of `symbol`.

    Raises:
      KeyError: naming the symbols the panel holds.
    """
    if symbol not in self.symbols:
      raise KeyError(f'{symbol!r} is not in the panel; it holds {", ".join(self.symbols)}')
    return self.symbols.index(symbol)

  def frame(self, symbol: str) -> pd.DataFrame:
    """One coin's bars as `load_ohlcv` gives them: the rows where it has a bar (zero-volume
    ones included), columns open, high, low, close, volume."""
    a = self.column(symbol)
    rows = np.isfinite(self.close[:, a])
    df = pd.DataFrame({c: getattr(self, c)[rows, a] for c in ohlcv.COLUMNS},
                      index=pd.DatetimeIndex(self.index[rows], name='timestamp'))
    df.attrs['source'] = self.sources[a]
    return df


def symbol_from_filename(path: str | os.PathLike) -> str:
  """`btc_usdt_1h_binance_2017_2022.csv.gz` -> `BTC`: the text before the first `_`, `-`
  or `.` of the file name, upper case."""
  name = os.path.basename(os.fspath(path))
  match = _SYMBOL.match(name)
  if not match:
    raise ohlcv.DataError(f'{path}: cannot derive a symbol from the file name; pass '
                          'symbols={file name: symbol}')
  return match.group(0).upper()


def _find_files(folder_or_glob: PathSpec) -> list[str]:
  if not isinstance(folder_or_glob, (str, os.PathLike)):
    files = [os.fspath(p) for p in folder_or_glob]
    what = 'the list of files'
  elif os.path.isdir(folder_or_glob):
    folder = os.fspath(folder_or_glob)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(_SUFFIXES))
    what = f'{folder} (looked for {", ".join("*" + s for s in _SUFFIXES)})'
  else:
    files = sorted(glob.glob(os.fspath(folder_or_glob)))
    what = f'the pattern {os.fspath(folder_or_glob)}'
  if not files:
    raise ohlcv.DataError(f'no OHLCV files in {what}; point load_universe at a folder of '
                          'timestamp,open,high,low,close,volume files')
  return files


def _assign_symbols(files: list[str], symbols: Sequence[str] | Mapping[str, str] | None
                    ) -> list[tuple[str, str]]:
  """(symbol, file) pairs in panel column order."""
  if isinstance(symbols, Mapping):
    by_name = {os.path.basename(f): f for f in files}
    unknown = [k for k in symbols if os.path.basename(k) not in by_name]
    if unknown:
      raise ohlcv.DataError(f'symbols names file(s) {", ".join(unknown)} that are not among '
                            f'the files found: {", ".join(sorted(by_name))}')
    pairs = [(str(s), by_name[os.path.basename(k)]) for k, s in symbols.items()]
  else:
    pairs = [(symbol_from_filename(f), f) for f in files]
  paths: dict[str, list[str]] = {}
  for symbol, path in pairs:
    paths.setdefault(symbol, []).append(path)
  if symbols is not None and not isinstance(symbols, Mapping):
    missing = [s for s in symbols if s not in paths]
    if missing:
      raise ohlcv.DataError(f'symbol(s) {", ".join(missing)} not found; the files give '
                            f'{", ".join(sorted(paths))}')
    if len(set(symbols)) < len(symbols):
      raise ValueError(f'symbols lists a coin twice: {list(symbols)}')
    pairs = [(s, paths[s][0]) for s in symbols]
  for symbol, _ in pairs:
    if len(paths[symbol]) > 1:
      raise ohlcv.DataError(f'{paths[symbol][1]}: symbol {symbol} is also the symbol of '
                            f'{paths[symbol][0]}; keep one file per coin, or pass '
                            'symbols={file name: symbol}')
  return pairs


def _timestamp(value: Any) -> pd.Timestamp | None:
  if value is None:
    return None
  stamp = pd.Timestamp(value)
  return stamp.tz_localize('UTC') if stamp.tzinfo is None else stamp.tz_convert('UTC')


def load_universe(folder_or_glob: PathSpec, *, start: Any = None, end: Any = None,
                  symbols: Sequence[str] | Mapping[str, str] | None = None,
                  freq: str | pd.Timedelta = '1h') -> Panel:
  """Reads OHLCV files and aligns them on one grid (see the module docstring).

  Args:
    folder_or_glob: a folder (its *.csv, *.csv.gz, *.json, *.json.gz files), a glob pattern,
      or a list of file paths.
    start, end: first and last bar open time to keep, inclusive (naive = UTC). Given, they
      are the grid's ends (rounded inwards to the grid); otherwise the grid runs from the
      earliest first bar to the latest last bar of the coins loaded.
    symbols: None (every file, symbols from the file names, in file-name order); a sequence
      of symbols (those coins, in that order); or a mapping {file name: symbol} (those
      files, named so, in the mapping's order).
    freq: the bar spacing every file must have.

  Returns:
    Panel of (bars, assets) arrays.

  Raises:
    DataError: no files; a file the loader rejects (naming its row and column); a file whose
      bars are spaced other than `freq` or lie off the grid; two files with one symbol; a
      symbol asked for that no file gives; a window with no bar of any coin.
  """
  freq_text, freq = str(freq), pd.Timedelta(freq)
  pairs = _assign_symbols(_find_files(folder_or_glob), symbols)
  first, last = _timestamp(start), _timestamp(end)
  if first is not None and last is not None and last < first:
    raise ValueError(f'end {last} is before start {first}')
  frames = []
  for _, path in pairs:
    df = ohlcv.load_ohlcv(path)
    if len(df) > 1 and ohlcv.infer_freq(df.index) != freq:
      raise ohlcv.DataError(f'{path}: bars are {df.attrs["gaps"]["freq"]} apart; the universe '
                            f'is on a {freq_text} grid (resample the file or load it apart)')
    off_grid = np.flatnonzero(df.index.asi8 % freq.value)
    if off_grid.size:
      raise ohlcv.DataError(f'{path}: bar {df.index[off_grid[0]]} is not on the {freq_text} '
                            f'grid ({off_grid.size} bars are off it)')
    frames.append(df.loc[first:last])
  if not any(len(df) for df in frames):
    raise ohlcv.DataError(f'no bar of any coin between {first} and {last}')
  lo = first.ceil(freq) if first is not None else min(df.index[0] for df in frames if len(df))
  hi = last.floor(freq) if last is not None else max(df.index[-1] for df in frames if len(df))
  index = pd.date_range(lo, hi, freq=freq, name='timestamp')
  columns = {c: np.full((len(index), len(pairs)), np.nan) for c in ohlcv.COLUMNS}
  for a, df in enumerate(frames):
    rows = index.get_indexer(df.index)
    for c in ohlcv.COLUMNS:
      columns[c][rows, a] = df[c].to_numpy(np.float64)
  available = np.isfinite(columns['close']) & (np.nan_to_num(columns['volume']) > 0)
  return Panel(index=index, symbols=tuple(s for s, _ in pairs), available=available,
               freq=freq, sources=tuple(p for _, p in pairs), **columns)
