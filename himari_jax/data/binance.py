"""Binance public kline archives -> the canonical OHLCV CSV.

Binance publishes monthly zip archives of spot klines with a `.CHECKSUM` file (sha256) beside
each one: `<base>/data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip`.
`download_klines` fetches and verifies them (or reads already-downloaded zips from a folder,
for machines without network access), parses them with `data.load_ohlcv` and returns one frame;
`write_canonical_csv` writes the `timestamp,open,high,low,close,volume` file every entry point
reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable

import pandas as pd

from himari_jax.data import ohlcv as data

BASE_URL = 'https://data.binance.vision'


class DownloadError(RuntimeError):
  """An archive could not be fetched, or failed its checksum."""


def month_range(start: str, end: str) -> list[str]:
  """Months from `start` to `end` inclusive, both 'YYYY-MM'."""
  try:
    first, last = pd.Period(start, 'M'), pd.Period(end, 'M')
  except ValueError as e:
    raise ValueError(f'months must look like 2024-01, got start={start!r} end={end!r}') from e
  if last < first:
    raise ValueError(f'end month {end} is before start month {start}')
  return [str(p) for p in pd.period_range(first, last, freq='M')]


def archive_name(symbol: str, interval: str, month: str) -> str:
  return f'{symbol.upper()}-{interval}-{month}.zip'


def archive_url(symbol: str, interval: str, month: str, base_url: str = BASE_URL) -> str:
  name = archive_name(symbol, interval, month)
  return f'{base_url}/data/spot/monthly/klines/{symbol.upper()}/{interval}/{name}'


def _fetch(url: str, timeout: float) -> bytes:
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      return response.read()
  except urllib.error.HTTPError as e:
    raise DownloadError(f'{url}: HTTP {e.code} ({e.reason}); check the symbol, interval and '
                        'that the month is complete (the current month has no archive yet)') from e
  except (urllib.error.URLError, TimeoutError, OSError) as e:
    raise DownloadError(
        f'cannot reach {url}: {getattr(e, "reason", e)}. This machine may be offline: download '
        'the .zip and .zip.CHECKSUM files elsewhere and pass --from_dir') from e


def verify_checksum(payload: bytes, checksum_text: str, name: str) -> None:
  """Raises DownloadError unless sha256(payload) equals the first field of `checksum_text`."""
  fields = checksum_text.split()
  if not fields:
    raise DownloadError(f'{name}.CHECKSUM is empty')
  expected = fields[0].lower()
  actual = hashlib.sha256(payload).hexdigest()
  if actual != expected:
    raise DownloadError(f'{name}: sha256 {actual} does not match the published {expected}; '
                        'the download is corrupt or was altered, fetch it again')


def parse_archive(payload: bytes, name: str) -> pd.DataFrame:
  """The kline CSV inside one Binance zip archive, as a canonical OHLCV frame."""
  try:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
      members = [m for m in archive.namelist() if m.endswith('.csv')]
      if len(members) != 1:
        raise DownloadError(f'{name}: expected one CSV inside the archive, found {members}')
      text = archive.read(members[0])
  except zipfile.BadZipFile as e:
    raise DownloadError(f'{name} is not a valid zip archive: {e}') from e
  buffer = io.BytesIO(text)
  buffer.name = f'{name}:{members[0]}'
  return data.load_ohlcv(buffer)


def download_klines(symbol: str, interval: str, start: str, end: str, *,
                    from_dir: str | None = None, cache_dir: str | None = None,
                    base_url: str = BASE_URL, timeout: float = 30.0,
                    progress: Callable[[str], None] = print) -> pd.DataFrame:
  """Monthly archives `start`..`end` ('YYYY-MM') of `symbol` as one OHLCV frame.

  With `from_dir`, archives and their `.CHECKSUM` files are read from that folder instead of
  the network. With `cache_dir`, verified downloads are kept there and reused.
  """
  frames = []
  months = month_range(start, end)
  for i, month in enumerate(months, 1):
    name = archive_name(symbol, interval, month)
    local = from_dir or cache_dir
    zip_path = os.path.join(local, name) if local else None
    if zip_path and os.path.exists(zip_path):
      checksum_path = zip_path + '.CHECKSUM'
      if not os.path.exists(checksum_path):
        raise DownloadError(f'{checksum_path} is missing; it is needed to verify {name}')
      with open(zip_path, 'rb') as f:
        payload = f.read()
      with open(checksum_path) as f:
        checksum = f.read()
    elif from_dir:
      raise DownloadError(f'{zip_path} not found; expected {name} and {name}.CHECKSUM there')
    else:
      url = archive_url(symbol, interval, month, base_url)
      payload = _fetch(url, timeout)
      checksum = _fetch(url + '.CHECKSUM', timeout).decode()
    verify_checksum(payload, checksum, name)
    if cache_dir and not from_dir and not os.path.exists(zip_path):
      os.makedirs(cache_dir, exist_ok=True)
      with open(zip_path, 'wb') as f:
        f.write(payload)
      with open(zip_path + '.CHECKSUM', 'w') as f:
        f.write(checksum)
    frames.append(parse_archive(payload, name))
    progress(f'[{i}/{len(months)}] {name}: {len(frames[-1])} bars, checksum ok')
  merged = pd.concat(frames)
  if merged.index.has_duplicates:
    raise DownloadError('archives overlap: duplicate timestamps after merging months')
  return merged.sort_index()


def write_canonical_csv(df: pd.DataFrame, path: str) -> None:
  """Writes `timestamp,open,high,low,close,volume` with UTC `YYYY-MM-DD HH:MM:SS` times."""
  out = df[['open', 'high', 'low', 'close', 'volume']].copy()
  out.index = out.index.strftime('%Y-%m-%d %H:%M:%S')
  out.index.name = 'timestamp'
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  out.to_csv(path, float_format='%.10g')
