"""Where live bars come from: a `BarSource` gives the closed bars up to now.

`CsvSource` re-reads a file on every poll; `BinanceSource` reads Binance's public REST klines
through urllib (no key, no extra dependency). A bar counts as closed once its open time plus
the interval is not after the clock; unclosed bars are never decided on.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

import pandas as pd

from himari_jax.data import ohlcv as data_lib
from himari_jax.data import plausibility

BINANCE_API = 'https://api.binance.com'
_KLINES_PAGE = 1000  # Binance's largest `limit` for /api/v3/klines


class FeedError(RuntimeError):
  """Bars could not be fetched (after retries), or the feed is stale or gapped."""


class BarSource(Protocol):
  """Where bars come from: `name` for messages, `interval` the bar length."""

  name: str
  interval: pd.Timedelta

  def bars(self, start: pd.Timestamp | None, count: int) -> pd.DataFrame:
    """Bars with open time >= `start` (closed or not, oldest first); with `start=None` the
    latest `count` of them at least. Validated as `data.load_ohlcv` does."""


def closed_bars(df: pd.DataFrame, interval: pd.Timedelta, now: pd.Timestamp) -> pd.DataFrame:
  """The bars of `df` that have closed by `now` (open time + interval <= now)."""
  return df[df.index + interval <= now]


class CsvSource:
  """Bars of a file `data.load_ohlcv` reads; re-read on every call, so it can be followed
  while another program appends to it."""

  def __init__(self, path: str | os.PathLike, interval: str | pd.Timedelta = '1h'):
    self.path = os.fspath(path)
    self.name = self.path
    self.interval = pd.Timedelta(interval)

  def bars(self, start: pd.Timestamp | None, count: int) -> pd.DataFrame:
    df = data_lib.load_ohlcv(self.path)
    return df if start is None else df[df.index >= start]


class BinanceSource:
  """Spot klines of `symbol` from Binance's public REST API (`GET /api/v3/klines`, no key).

  Network errors, HTTP 429 and 5xx are retried `retries` times, waiting `backoff * 2**k`
  seconds before retry k; then, or at once for other HTTP errors (e.g. an unknown symbol),
  a FeedError says what the server answered.
  """

  def __init__(self, symbol: str, interval: str = '1h', *, base_url: str = BINANCE_API,
               timeout: float = 10.0, retries: int = 4, backoff: float = 1.0,
               page_size: int = _KLINES_PAGE, sleep: Callable[[float], None] = time.sleep,
               log: Callable[[str], None] = print):
    self.symbol = symbol.upper()
    self.interval_text = interval
    self.interval = pd.Timedelta(interval)
    self.base_url = base_url.rstrip('/')
    self.name = f'binance:{self.symbol}'
    self.timeout, self.retries, self.backoff = timeout, retries, backoff
    self.page_size, self.sleep, self.log = page_size, sleep, log

  def url(self, start: pd.Timestamp | None, limit: int) -> str:
    query = {'symbol': self.symbol, 'interval': self.interval_text, 'limit': limit}
    if start is not None:
      query['startTime'] = start.value // 10**6
    return f'{self.base_url}/api/v3/klines?{urllib.parse.urlencode(query)}'

  def _get(self, url: str) -> list:
    attempt = 0
    while True:
      try:
        with urllib.request.urlopen(url, timeout=self.timeout) as response:
          return json.loads(response.read())
      except urllib.error.HTTPError as e:
        body = e.read().decode('utf-8', 'replace')[:200]
        problem = f'HTTP {e.code} {e.reason}: {body}'
        if e.code != 429 and e.code < 500:
          raise FeedError(f'{url}: {problem}; check the symbol and interval') from e
      except (urllib.error.URLError, TimeoutError, OSError) as e:
        problem = f'cannot reach the server ({getattr(e, "reason", e)})'
      except json.JSONDecodeError as e:
        problem = f'the answer is not JSON ({e})'
      if attempt == self.retries:
        raise FeedError(f'{url}: {problem}; gave up after {self.retries + 1} attempts')
      wait = self.backoff * 2**attempt
      self.log(f'{self.name}: {problem}; retrying in {wait:g} s')
      self.sleep(wait)
      attempt += 1

  def _frame(self, klines: list, url: str) -> pd.DataFrame:
    # A kline served twice (pages overlap, or the server repeats itself) is one bar; two
    # different klines at one open time stay and are refused as duplicates.
    buffer = io.StringIO(json.dumps(list({json.dumps(k): k for k in klines}.values())))
    buffer.name = url
    return data_lib.load_ohlcv(buffer)

  def bars(self, start: pd.Timestamp | None, count: int) -> pd.DataFrame:
    if start is None:
      # The newest `count` closed bars plus the forming one, from the newest open time.
      url = self.url(None, 1)
      start = self._frame(self._get(url), url).index[-1] - self.interval * count
    frames, page_start = [], start
    while True:
      url = self.url(page_start, self.page_size)
      klines = self._get(url)
      if not klines:
        break
      frames.append(self._frame(klines, url))
      if len(klines) < self.page_size:
        break
      page_start = frames[-1].index[-1] + self.interval
    if not frames:
      raise FeedError(f'{self.name}: no bars from {start} on ({self.url(start, 1)})')
    df = pd.concat(frames)
    return df[~df.index.duplicated(keep='last')]


def parse_interval(text: str) -> pd.Timedelta:
  """'1h', '15min', '1d' -> the bar length.

  Raises:
    ValueError: naming `--interval`, for text that is not a length or one that is not > 0.
  """
  try:
    interval = pd.Timedelta(text)
  except ValueError:
    raise ValueError(f'--interval={text}: not a bar length; write one such as 1h, 15min or 1d'
                     ) from None
  if interval <= pd.Timedelta(0):
    raise ValueError(f'--interval={text}: a bar length must be positive, such as 1h')
  return interval


def check_source(source: BarSource, history: int, *,
                 max_bar_move: float = plausibility.MAX_BAR_MOVE,
                 refuse_large_moves: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Reads and checks the latest `history` bars of `source` now, so that a bad file, symbol,
  server or interval is reported before anything slow (loading models) starts.

  Returns:
    `plausibility.check_bars`' report: their interval must be `source.interval`; filled
    gaps and moves beyond `max_bar_move` are logged (or refused).

  Raises:
    data.DataError, FeedError: as `source.bars` does, or bars `check_bars` refuses.
  """
  return plausibility.check_bars(
      source.bars(None, history), source=source.name, expected_interval=source.interval,
      interval_setting=f'--interval={data_lib.freq_string(source.interval)}',
      max_bar_move=max_bar_move, refuse_large_moves=refuse_large_moves, log=log)


def parse_source(spec: str, *, interval: str = '1h', **binance_options: Any) -> BarSource:
  """'binance:BTCUSDT' -> BinanceSource; anything else is a file path -> CsvSource.

  Raises:
    ValueError: a malformed spec or `interval` (`parse_interval`).
    data.DataError: a file that does not exist.
  """
  parse_interval(interval)
  if spec.lower().startswith('binance:'):
    symbol = spec.split(':', 1)[1].strip()
    if not symbol.isalnum():
      raise ValueError(f'--data={spec}: expected binance:SYMBOL such as binance:BTCUSDT')
    return BinanceSource(symbol, interval, **binance_options)
  if not os.path.exists(spec):
    raise data_lib.DataError(f'{spec}: no such file; pass a CSV / JSON file of bars or '
                             'binance:SYMBOL')
  return CsvSource(spec, interval)
