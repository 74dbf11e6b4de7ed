"""OHLCV loading and validation: CSV or JSON candles -> checked pandas frame.

The canonical file has the header `timestamp,open,high,low,close,volume` with UTC bar open
times. Binance kline CSVs (no header; open time in milliseconds, or microseconds in archives
from 2025 on; then open, high, low, close, volume and six more columns) are read as well, and
so are other exchanges' and tools' layouts, detected from the file itself (`load_ohlcv`):
CryptoDataDownload exports, CSVs with common column spellings, and JSON candle arrays
(freqtrade, ccxt, Binance REST).

Every defect of SPEC section 2 raises `DataError` naming the file, the row and the column.
Row numbers are 1-based line numbers of the file (the header, when present, is row 1), so an
editor's go-to-line lands on the offending bar.

Gaps (missing bars) are reported, never silently repaired: `find_gaps` returns a `GapReport`
and `load_ohlcv` attaches its dict to `df.attrs['gaps']`; `fill_gaps=True` inserts flat,
zero-volume bars at the previous close.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import io
import json
import os
import re
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
import pandas as pd

COLUMNS = ('open', 'high', 'low', 'close', 'volume')
PRICE_COLUMNS = ('open', 'high', 'low', 'close')
# Accepted names of the time column in a header (lower case), the first present wins: epoch
# columns before text dates, which may be local or ambiguous ('2019-10-17 09-AM').
_TIME_COLUMNS = ('timestamp', 'open_time', 'open time', 'unix', 'unix_timestamp', 'time', 'date',
                 'datetime', 'open_date')
_ALIASES = {'open': ('open', 'o'), 'high': ('high', 'h'), 'low': ('low', 'l'),
            'close': ('close', 'c'), 'volume': ('volume', 'vol', 'v')}
_CDD_DATE = r'\d{4}-\d{2}-\d{2} \d{1,2}-[AaPp][Mm]'  # CryptoDataDownload: 2019-10-17 09-AM
_BANNER_LINES = 5  # leading lines that may be a banner before the header
_BINANCE_MIN_FIELDS = 6  # open_time, open, high, low, close, volume (then 6 we ignore)
_SUFFIX = '.csv.gz'

PathOrBuffer = str | os.PathLike | IO[str] | IO[bytes]


class DataError(ValueError):
  """A data file is malformed; the message names the file, row and column and the fix."""


# ----------------------------------------------------------------------------- parsing


def _source_name(path_or_buffer: PathOrBuffer) -> str:
  if isinstance(path_or_buffer, (str, os.PathLike)):
    return os.fspath(path_or_buffer)
  return str(getattr(path_or_buffer, 'name', '<buffer>'))


def _read_text(path_or_buffer: PathOrBuffer) -> str:
  """The file's text; gzip is detected by its magic bytes, a UTF-8 byte-order mark dropped."""
  if isinstance(path_or_buffer, (str, os.PathLike)):
    with open(path_or_buffer, 'rb') as f:
      payload = f.read()
  else:
    payload = path_or_buffer.read()
  if isinstance(payload, str):
    return payload.lstrip('\ufeff')
  if payload[:2] == b'\x1f\x8b':
    payload = gzip.decompress(payload)
  return payload.decode('utf-8-sig')


def _read_file(path_or_buffer: PathOrBuffer, source: str) -> str:
  try:
    text = _read_text(path_or_buffer)
  except OSError as e:
    raise DataError(f'{source}: cannot read the file ({e})') from e
  except UnicodeDecodeError as e:
    raise DataError(f'{source}: not a UTF-8 text file ({e}); export it as CSV') from e
  if not text.strip():
    raise DataError(f'{source}: the file is empty; expected the header '
                    f'timestamp,{",".join(COLUMNS)} and one row per bar')
  return text


def _read_raw(text: str) -> pd.DataFrame:
  """Every field as a string ('' where a row is short); row i is line i + 1 of the file."""
  width = max(line.count(',') for line in text.splitlines()) + 1
  # Blank lines are kept (as empty rows, dropped later) so row numbers stay line numbers;
  # `names` makes short and long rows parse, so they get a row-numbered error below.
  return pd.read_csv(io.StringIO(text), header=None, names=range(width), dtype=str,
                     keep_default_na=False, skip_blank_lines=False)


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _fail(source: str, bad: np.ndarray, lines: np.ndarray, column: str,
          describe: Any, fix: str) -> None:
  """Raises DataError for the first True in `bad` (describe(i) -> text) if there is one."""
  where = np.flatnonzero(bad)
  if not where.size:
    return
  i = int(where[0])
  more = f' ({where.size} rows have this problem; the first is shown)' if where.size > 1 else ''
  raise DataError(f'{source} row {lines[i]}, column {column}: {describe(i)}; {fix}{more}')


def _parse_timestamps(text: pd.Series, source: str, lines: np.ndarray,
                      column: str) -> pd.DatetimeIndex:
  """ISO-8601 strings (naive = UTC) or integer epochs in s / ms / us / ns, per row."""
  text = text.str.strip()
  is_epoch = text.str.fullmatch(r'\d{1,18}').to_numpy(dtype=bool)
  nanos = np.full(len(text), np.iinfo(np.int64).min, dtype=np.int64)  # NaT until parsed
  if is_epoch.any():
    epoch = text[is_epoch].astype(np.int64).to_numpy()
    # The magnitude gives the unit: Binance wrote ms until 2024 and us from 2025 on.
    scale = np.select([epoch < 10**11, epoch < 10**14, epoch < 10**17], [10**9, 10**6, 10**3], 1)
    nanos[is_epoch] = epoch * scale
  if (~is_epoch).any():
    rest = text[~is_epoch]
    parsed = pd.to_datetime(rest, utc=True, errors='coerce', format='ISO8601')
    cdd = rest.str.fullmatch(_CDD_DATE)
    if cdd.any():
      parsed[cdd] = pd.to_datetime(rest[cdd].str.upper(), utc=True, errors='coerce',
                                   format='%Y-%m-%d %I-%p')
    naive = parsed.dt.tz_localize(None).astype('datetime64[ns]')
    nanos[~is_epoch] = naive.to_numpy().view(np.int64)
  times = pd.DatetimeIndex(nanos.view('datetime64[ns]')).tz_localize('UTC')
  _fail(source, (text == '').to_numpy(), lines, column, lambda i: 'the timestamp is missing',
        'fill it in or drop the row')
  _fail(source, times.isna(), lines, column,
        lambda i: f'cannot parse timestamp {text.iloc[i]!r}',
        "write it as 'YYYY-MM-DD HH:MM:SS' (UTC) or as epoch milliseconds")
  return times


def _parse_numbers(text: pd.Series, source: str, lines: np.ndarray, column: str) -> np.ndarray:
  text = text.str.strip()
  values = pd.to_numeric(text, errors='coerce').to_numpy(dtype=np.float64)
  empty = (text == '').to_numpy()
  _fail(source, empty, lines, column, lambda i: 'the value is missing',
        'fill it in or drop the row')
  literal_nan = text.str.lower().str.lstrip('+-').isin(['nan', 'na', 'n/a', 'null', 'none'])
  unparsable = np.isnan(values) & ~literal_nan.to_numpy()
  _fail(source, unparsable, lines, column, lambda i: f'cannot parse {text.iloc[i]!r} as a number',
        'write a plain decimal number such as 41250.5')
  _fail(source, ~np.isfinite(values), lines, column, lambda i: f'{column} is {text.iloc[i]}',
        'replace it with a finite value or drop the row')
  return values


def _validate_bars(values: dict[str, np.ndarray], source: str, lines: np.ndarray) -> None:
  for col in PRICE_COLUMNS:
    v = values[col]
    _fail(source, v <= 0, lines, col, lambda i, v=v, col=col: f'{col} {v[i]} is not positive',
          'prices must be > 0; fix or drop the row')
  vol = values['volume']
  _fail(source, vol < 0, lines, 'volume', lambda i: f'volume {vol[i]} is negative',
        'fix or drop the row')
  opn, high, low, close = (values[k] for k in PRICE_COLUMNS)
  _fail(source, high < np.maximum(opn, close), lines, 'high',
        lambda i: (f'high {high[i]} < {"close" if close[i] > opn[i] else "open"} '
                   f'{max(opn[i], close[i])}'), 'fix or drop the row')
  _fail(source, low > np.minimum(opn, close), lines, 'low',
        lambda i: (f'low {low[i]} > {"close" if close[i] < opn[i] else "open"} '
                   f'{min(opn[i], close[i])}'), 'fix or drop the row')


def _check_order(times: pd.DatetimeIndex, source: str, lines: np.ndarray, column: str,
                 sort: bool) -> np.ndarray:
  """Rejects duplicates (and, unless `sort`, disorder); returns the order to take rows in."""
  duplicated = times.duplicated(keep='first')
  first_line = {}
  if duplicated.any():
    for t, line in zip(times[~duplicated], lines[~duplicated], strict=True):
      first_line[t] = line
  _fail(source, duplicated, lines, column,
        lambda i: f'duplicate timestamp {times[i]} (also at row {first_line[times[i]]})',
        'keep one of the two rows')
  ns = times.asi8
  if sort:
    return np.argsort(ns, kind='stable')
  if len(ns) > 1 and np.all(ns[1:] < ns[:-1]):
    return np.arange(len(ns))[::-1]  # newest bar first (CryptoDataDownload): a layout, not disorder
  _fail(source, np.r_[False, ns[1:] < ns[:-1]], lines, column,
        lambda i: f'{times[i]} is earlier than {times[i - 1]} on row {lines[i - 1]}: '
                  'rows are out of order',
        'sort the file by time, or pass sort=True')
  return np.arange(len(times))


def _pick_volume(header: list[str], raw: pd.DataFrame, source: str, line: int) -> int:
  """Column index of the base-asset volume: `volume`, or among 'volume <asset>' columns
  ('Volume BTC') the one the symbol names first; a symbol's base-asset column wins over a
  bare `volume` (older CryptoDataDownload files: `volume_btc`, then `volume` in dollars)."""
  exact = [i for i, h in enumerate(header) if h in _ALIASES['volume']]
  named = {i: h.split(maxsplit=1)[1] if ' ' in h else h.split('_', 1)[1]
           for i, h in enumerate(header) if h.startswith(('volume ', 'volume_'))}
  # Exchanges export base and quote volume ('Volume BTC', 'Volume USDT'); the symbol says
  # which is the base asset (BTC/USDT, BTCUSDT, BTC-USDT).
  symbol = ''
  if 'symbol' in header and len(raw) > line:
    symbol = re.sub(r'[^a-z0-9]', '', str(raw.iloc[line, header.index('symbol')]).lower())
  base = [i for i, asset in named.items() if symbol.startswith(asset.lower())]
  if len(base) == 1:
    return base[0]
  if exact:
    return exact[0]
  if len(named) == 1:
    return next(iter(named))
  if not named:
    raise DataError(f'{source} row {line}, column volume: missing column(s) volume (header is '
                    f'{",".join(header)}); the header must be timestamp,{",".join(COLUMNS)}')
  listed = ', '.join(header[i] for i in named)
  raise DataError(f'{source} row {line}, column {header[next(iter(named))]}: {len(named)} volume '
                  f'columns ({listed}) and no symbol column that names the base asset; keep the '
                  'base-asset volume only, or rename it to volume')


def _csv_fields(raw: pd.DataFrame, source: str
                ) -> tuple[dict[str, pd.Series], np.ndarray, str, str]:
  """(string fields by canonical name, their file lines, time column, layout) of a CSV."""
  lines = np.arange(1, len(raw) + 1)
  # Leading banner lines are skipped: one field, or a URL (CryptoDataDownload's first line is
  # its URL, or 'Timestamps are UTC timezone,https://www.CryptoDataDownload.com' in older files).
  head = raw.iloc[:_BANNER_LINES].to_numpy(str)
  banner = np.array([sum(f != '' for f in row) < 2 or any('://' in f for f in row)
                     for row in head])
  top = int(np.argmin(banner)) if not banner.all() else 0
  from_cdd = any('cryptodatadownload' in ','.join(row).lower() for row in head[:top])
  first = raw.iloc[top, 0].strip()
  if _is_number(first):  # Binance kline CSV: no header, columns by position.
    if raw.shape[1] < _BINANCE_MIN_FIELDS:
      raise DataError(f'{source} row {top + 1}: a header-less file is read as Binance klines '
                      f'and needs at least {_BINANCE_MIN_FIELDS} fields '
                      f'(open_time,{",".join(COLUMNS)}), found {raw.shape[1]}; add the header '
                      f'timestamp,{",".join(COLUMNS)}')
    raw, lines = raw.iloc[top:], lines[top:]
    fields = {'open_time': raw[0], **{c: raw[j + 1] for j, c in enumerate(COLUMNS)}}
    return fields, lines, 'open_time', 'binance_klines'
  header = [str(h).strip().lower() for h in raw.iloc[top]]
  time_col = next((c for c in _TIME_COLUMNS if c in header), None)
  if time_col in ('time', 'date') and {'time', 'date'} <= set(header):
    raise DataError(f'{source} row {top + 1}, column {time_col}: separate date and time columns '
                    '(header is ' + ','.join(header) + '); join them into one timestamp column '
                    "such as '2024-03-01 13:00:00' (UTC)")
  where = {c: next((header.index(a) for a in _ALIASES[c] if a in header), None)
           for c in PRICE_COLUMNS}
  where['volume'] = _pick_volume(header, raw, source, top + 1) if all(
      i is not None for i in where.values()) and time_col else None
  missing = [c for c in COLUMNS if where[c] is None] + ([] if time_col else ['timestamp'])
  if missing:
    raise DataError(f'{source} row {top + 1}, column {missing[0]}: missing column(s) '
                    f'{", ".join(missing)} (header is {",".join(header)}); the header must be '
                    f'timestamp,{",".join(COLUMNS)}')
  fields = {time_col: raw[header.index(time_col)], **{c: raw[i] for c, i in where.items()}}
  width = max(i for i, h in enumerate(header) if h) + 1
  raw, lines = raw.iloc[top + 1:], lines[top + 1:]
  extra = (raw.iloc[:, width:] != '').any(axis=1).to_numpy()
  _fail(source, extra, lines, f'{width + 1}',
        lambda i: f'the row has more fields than the {width} of the header',
        'remove the extra fields or name them in the header')
  fields = {c: f.iloc[top + 1:] for c, f in fields.items()}
  layout = 'canonical' if header[:6] == ['timestamp', *COLUMNS] else 'csv'
  if from_cdd or ('unix' in header and 'symbol' in header):
    layout = 'cryptodatadownload'
  return fields, lines, time_col, layout


def _json_fields(text: str, source: str) -> tuple[dict[str, pd.Series], np.ndarray, str, str]:
  """Candles as a JSON array of arrays `[time, open, high, low, close, volume, ...]`: freqtrade
  data files (numbers) and Binance REST klines (prices as strings). Row i is candle i."""
  try:
    candles = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f'{source} row {e.lineno}: not valid JSON ({e.msg}); expected candles '
                    '[[time_ms, open, high, low, close, volume], ...]') from e
  if not isinstance(candles, list) or not candles:
    raise DataError(f'{source}: expected a non-empty JSON array of candles '
                    '[[time_ms, open, high, low, close, volume], ...]')
  for i, candle in enumerate(candles):
    if not isinstance(candle, list) or len(candle) < _BINANCE_MIN_FIELDS:
      raise DataError(f'{source} row {i + 1} (candle {i + 1}): expected '
                      f'[time_ms, {", ".join(COLUMNS)}], got {str(candle)[:80]}')
  names = ('open_time', *COLUMNS)
  fields = {name: pd.Series(['' if c[j] is None else str(c[j]) for c in candles], dtype=str)
            for j, name in enumerate(names)}
  return fields, np.arange(1, len(candles) + 1), 'open_time', 'json_candles'


def load_ohlcv(path_or_buffer: PathOrBuffer, *, sort: bool = False,
               fill_gaps: bool = False) -> pd.DataFrame:
  """Reads and validates OHLCV bars, detecting the layout from the file itself.

  Layouts (any of them gzip-compressed):
    * the canonical CSV, header `timestamp,open,high,low,close,volume`;
    * a CSV with a header in common spellings: the time as `timestamp`, `open_time`, `unix`,
      `time`, `date`, ... (ISO-8601 text, naive = UTC, or epoch s / ms / us), prices as
      `Open` / `open` / `o`, the volume as `volume`, `Volume BTC` (with a base and a quote
      volume the `symbol` column picks the base one), extra columns ignored;
    * CryptoDataDownload exports: a banner line first, newest bar first, dates like
      `2019-10-17 09-AM` (its `unix` column is used where there is one); the older layout
      too (banner `Timestamps are UTC timezone,https://www.CryptoDataDownload.com`, header
      `date,symbol,open,high,low,close,volume_btc,volume`, the base volume `volume_btc`);
    * Binance kline CSVs without a header (open time in ms, or us from 2025 on);
    * JSON candles `[[time_ms, open, high, low, close, volume, ...], ...]`: freqtrade data
      files, ccxt `fetch_ohlcv` dumps and Binance REST klines.

  A file whose bars run newest first is reversed; any other disorder is an error unless
  `sort`. Row numbers in errors are file lines (JSON: candle numbers, from 1).

  Args:
    path_or_buffer: a path or an open file; a buffer's `name` attribute is used in messages.
    sort: sort rows by time instead of rejecting out-of-order rows.
    fill_gaps: insert flat zero-volume bars at the previous close for missing bars.

  Returns:
    DataFrame with a UTC DatetimeIndex 'timestamp' (bar open time, increasing, unique) and
    float64 columns open, high, low, close, volume; `attrs['source']` is the file name,
    `attrs['layout']` the layout detected ('canonical', 'csv', 'cryptodatadownload',
    'binance_klines', 'json_candles') and `attrs['gaps']` the `GapReport.to_dict()` of the
    file as read (before any filling).

  Raises:
    DataError: on any defect listed in SPEC section 2, or a layout it cannot read
      unambiguously (e.g. two volume columns and no symbol).
  """
  source = _source_name(path_or_buffer)
  text = _read_file(path_or_buffer, source)
  if text.lstrip().startswith('['):
    fields, lines, time_col, layout = _json_fields(text, source)
  else:
    fields, lines, time_col, layout = _csv_fields(_read_raw(text), source)
  return frame_from_fields(fields, lines, time_col, source, layout=layout, sort=sort,
                           fill_gaps=fill_gaps)


def frame_from_fields(fields: dict[str, pd.Series], lines: np.ndarray, time_col: str,
                      source: str, *, layout: str = 'fields', sort: bool = False,
                      fill_gaps: bool = False) -> pd.DataFrame:
  """The validated OHLCV frame of string fields, as `load_ohlcv` returns it.

  Args:
    fields: `time_col` and open, high, low, close, volume, each a Series of N strings.
    lines: (N,) the row number of each bar in `source`, for messages.
    time_col: the name of the time field (also used in messages).
    source: where the fields come from (a file name, a URL).
  """
  blank = pd.concat(list(fields.values()), axis=1).eq('').all(axis=1).to_numpy()
  lines = lines[~blank]
  fields = {c: f[~blank].reset_index(drop=True) for c, f in fields.items()}
  if not len(lines):
    raise DataError(f'{source} row 2: the file has a header but no bars; expected one row per '
                    'bar after the header')

  times = _parse_timestamps(fields[time_col], source, lines, time_col)
  values = {c: _parse_numbers(fields[c], source, lines, c) for c in COLUMNS}
  _validate_bars(values, source, lines)
  order = _check_order(times, source, lines, time_col, sort)

  df = pd.DataFrame({c: values[c][order] for c in COLUMNS},
                    index=pd.DatetimeIndex(times[order], name='timestamp'))
  df.attrs['source'] = source
  df.attrs['layout'] = layout
  report = find_gaps(df)
  df.attrs['gaps'] = report.to_dict()
  if fill_gaps:
    df = fill_missing_bars(df, report.freq, source=source)
  return df


def check_frame(df: pd.DataFrame, what: str = 'frame') -> None:
  """Checks an in-memory OHLCV frame as functions that compute on bars need it.

  Args:
    df: N bars; a DatetimeIndex of bar times and columns open, high, low, close, volume.
    what: how messages name the frame (e.g. 'compute_features input').

  Raises:
    DataError: naming the first bad row and time and the fix, for missing columns, an index
      that is not a DatetimeIndex, duplicate or decreasing times, or NaN / inf values.
  """
  source = df.attrs.get('source')
  name = f'{what} ({source})' if source else what
  missing = [c for c in COLUMNS if c not in df.columns]
  if missing:
    raise DataError(f'{name} is missing column(s) {", ".join(missing)}; it needs '
                    f'{", ".join(COLUMNS)} (data.load_ohlcv gives such a frame)')
  if not isinstance(df.index, pd.DatetimeIndex):
    raise DataError(f'{name} has a {type(df.index).__name__}, not the bar times; set a '
                    "DatetimeIndex, e.g. df.set_index(pd.to_datetime(df['timestamp'], utc=True))")
  ns = df.index.asi8
  duplicated = np.flatnonzero(df.index.duplicated(keep='first'))
  if duplicated.size:
    i = int(duplicated[0])
    raise DataError(f'{name} row {i}: duplicate bar time {df.index[i]} ({duplicated.size} '
                    "duplicates); keep one row per time: df[~df.index.duplicated(keep='last')]")
  backwards = np.flatnonzero(ns[1:] < ns[:-1])
  if backwards.size:
    i = int(backwards[0]) + 1
    raise DataError(f'{name} row {i}: {df.index[i]} comes after {df.index[i - 1]}; the bars '
                    'are not in time order, sort them with df.sort_index()')
  for col in COLUMNS:
    values = df[col].to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      i = int(bad[0])
      raise DataError(f'{name} row {i} ({df.index[i]}), column {col}: {values[i]} '
                      f'({bad.size} non-finite values); drop or repair those bars, or load '
                      'the file with data.load_ohlcv, which rejects them')


# ------------------------------------------------------------------------------- gaps


@dataclasses.dataclass(frozen=True)
class GapReport:
  """Missing bars in a series.

  Attributes:
    freq: bar spacing (the most common time difference).
    count: number of gaps (runs of consecutive missing bars).
    missing_bars: total number of missing bars.
    largest: length in bars of the longest gap (0 if none).
    gaps: (first missing bar open time, length in bars) per gap, in time order.
  """
  freq: pd.Timedelta
  count: int
  missing_bars: int
  largest: int
  gaps: tuple[tuple[pd.Timestamp, int], ...]

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly form (times as ISO strings, freq as a pandas offset string)."""
    return {'freq': freq_string(self.freq), 'count': self.count,
            'missing_bars': self.missing_bars, 'largest': self.largest,
            'gaps': [[t.isoformat(), n] for t, n in self.gaps]}

  def __str__(self) -> str:
    if not self.count:
      return 'no gaps'
    t, n = max(self.gaps, key=lambda g: g[1])
    return (f'{self.count} gaps, {self.missing_bars} missing bars, largest {n} bars '
            f'from {t:%Y-%m-%d %H:%M} UTC')


def freq_string(freq: pd.Timedelta) -> str:
  """'1h', '15min', ...: readable, and parsed back by pd.Timedelta."""
  text = pd.tseries.frequencies.to_offset(freq).freqstr
  return text if text[0].isdigit() else f'1{text}'


def infer_freq(index: pd.DatetimeIndex) -> pd.Timedelta:
  """The most common spacing of `index`; one hour when it has fewer than two bars."""
  if len(index) < 2:
    return pd.Timedelta(hours=1)
  steps = np.diff(index.as_unit('ns').asi8)  # asi8 counts the index's own unit (s, ms, ...)
  values, counts = np.unique(steps, return_counts=True)
  return pd.Timedelta(int(values[np.argmax(counts)]), unit='ns')


def find_gaps(df: pd.DataFrame, freq: pd.Timedelta | str | None = None) -> GapReport:
  """Missing bars of a time-sorted frame; `freq` defaults to the most common spacing."""
  freq = infer_freq(df.index) if freq is None else pd.Timedelta(freq)
  steps = np.diff(df.index.as_unit('ns').asi8)
  missing = steps // freq.value - 1
  where = np.flatnonzero(missing > 0)
  gaps = tuple((df.index[i] + freq, int(missing[i])) for i in where)
  lengths = [n for _, n in gaps]
  return GapReport(freq=freq, count=len(gaps), missing_bars=int(sum(lengths)),
                   largest=max(lengths, default=0), gaps=gaps)


def fill_missing_bars(df: pd.DataFrame, freq: pd.Timedelta | str | None = None, *,
                      source: str | None = None) -> pd.DataFrame:
  """Inserts a flat bar (open = high = low = close = previous close, volume 0) per missing bar.

  Raises:
    DataError: if a timestamp is off the `freq` grid that starts at the first bar (filling
      would otherwise drop it).
  """
  freq = infer_freq(df.index) if freq is None else pd.Timedelta(freq)
  source = source or df.attrs.get('source', '<frame>')
  off_grid = np.flatnonzero((df.index.asi8 - df.index.asi8[0]) % freq.value)
  if off_grid.size:
    raise DataError(f'{source}, bar {df.index[off_grid[0]]}, column timestamp: not on the '
                    f'{freq_string(freq)} grid that starts at the first bar '
                    f'({off_grid.size} bars are off it); fix the timestamps or load with '
                    'fill_gaps=False')
  grid = pd.date_range(df.index[0], df.index[-1], freq=freq, name='timestamp')
  filled = df.reindex(grid)
  close = filled['close'].ffill()
  missing = filled['close'].isna()
  for col in PRICE_COLUMNS:
    filled[col] = filled[col].where(~missing, close)
  filled['volume'] = filled['volume'].fillna(0.0)
  filled.attrs = {**df.attrs, 'filled_bars': int(missing.sum())}
  return filled


# ------------------------------------------------------------------------ bundled data


def _builtin_files() -> dict[str, importlib.resources.abc.Traversable]:
  folder = importlib.resources.files('himari_jax.data') / 'datasets'
  return {f.name[:-len(_SUFFIX)].replace('_binance', ''): f
          for f in folder.iterdir() if f.name.endswith(_SUFFIX)}


def builtin_dataset_names() -> list[str]:
  """Names of the bundled datasets, e.g. 'btc_usdt_1h_2020_2024' (sorted)."""
  return sorted(_builtin_files())


@functools.lru_cache(maxsize=8)
def _load_builtin(name: str) -> pd.DataFrame:
  files = _builtin_files()
  if name not in files:
    raise DataError(f'unknown builtin dataset {name!r}; valid names: '
                    f'{", ".join(sorted(files))} (or pass a CSV path)')
  buffer = io.BytesIO(gzip.decompress(files[name].read_bytes()))
  buffer.name = f'himari_jax/data/datasets/{files[name].name}'
  return load_ohlcv(buffer)


def builtin_dataset(name: str, *, fill_gaps: bool = False) -> pd.DataFrame:
  """A bundled real OHLCV series by name (see `builtin_dataset_names`), as `load_ohlcv` gives.

  Raises:
    DataError: for an unknown name; the message lists the valid ones.
  """
  df = _load_builtin(name).copy()  # the cached frame is shared, callers get their own
  if fill_gaps:
    df = fill_missing_bars(df)
  return df


def load_dataset(name_or_path: str | os.PathLike, *, fill_gaps: bool = False,
                 sort: bool = False) -> pd.DataFrame:
  """One series from a builtin dataset name or a CSV path (config fields such as data.train).

  Raises:
    DataError: if it is neither a builtin name nor an existing file, or the file is malformed.
  """
  text = os.fspath(name_or_path)
  if text in _builtin_files():
    return builtin_dataset(text, fill_gaps=fill_gaps)
  if not os.path.exists(text):
    raise DataError(f'{text}: no such file and not a builtin dataset; builtin names: '
                    f'{", ".join(builtin_dataset_names())}')
  return load_ohlcv(text, sort=sort, fill_gaps=fill_gaps)


def load_datasets(spec: str | Sequence[str], *, fill_gaps: bool = False,
                  sort: bool = False) -> list[pd.DataFrame]:
  """Several series from a comma-separated string ('btc_usdt_1h_2020_2024,data/eth.csv') or a
  sequence of names / paths; always a list, one frame per entry, in the order given."""
  items = spec.split(',') if isinstance(spec, str) else list(spec)
  items = [s.strip() for s in items if s.strip()]
  if not items:
    raise DataError(f'no dataset given in {spec!r}; builtin names: '
                    f'{", ".join(builtin_dataset_names())}')
  return [load_dataset(s, fill_gaps=fill_gaps, sort=sort) for s in items]
