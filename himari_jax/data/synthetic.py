"""Synthetic OHLCV markets with nothing to predict: resampled bars of a real series.

A placebo run puts the whole pipeline on a market that looks like the real one bar by bar but
whose future cannot be read from its past; whatever the pipeline "finds" there is what noise
produces. `make_market` builds such a market from a real frame (`data.load_dataset` output):

* Each real bar t (with a real bar t-1 one `freq` before it) is described by its *shape*: the
  close-to-close log return `log(close_t / close_{t-1})`, the opening gap
  `log(open_t / close_{t-1})`, the excursions `log(high_t / max(open_t, close_t))` and
  `log(min(open_t, close_t) / low_t)` (both >= 0), and its volume (`bar_shapes`). Pairs that
  span a missing bar are left out: a two-hour return is not an hourly one.
* A synthetic market draws whole shapes, so return, candle and volume stay together, and
  rebuilds prices from a start price; high >= max(open, close) and low <= min(open, close)
  hold by construction, so `data.load_ohlcv`'s validation and every later stage accept it.
* `method='iid'`: shapes drawn independently (a random walk with the real return
  distribution: no autocorrelation of returns, none of |returns| either).
  `method='block'`: the stationary bootstrap of Politis & Romano (1994): blocks of consecutive
  real bars with geometric lengths of mean `mean_block_length`, starting at uniform positions
  and wrapping around the end of the pool. It keeps volatility clustering (and the volume
  profile) within blocks. Consecutive real bars also keep whatever made bar t+1's direction
  readable at bar t (return autocorrelation, a volume or candle pattern: the very edges a
  placebo must not contain), so by default (`random_signs`) every drawn bar is mirrored with
  probability 1/2: its return reflected about the pool's mean, its gap negated and its upper
  and lower excursions swapped. Directions are then fair coin flips independent of the past,
  while |returns|, candles and volume keep their clustering; the cost is a return
  distribution made symmetric about its mean (BTC hourly skewness is small, -0.03 in
  2023-2024, though -1 over 2020-2024 through a few crash bars).
* `make_era_market`: a placebo for one era (e.g. a test year) drawn from that era's own bars,
  so its drift and volatility are the era's, with the block bootstrap's blocks a month long
  and each block starting at a pool bar of the same hour of the week as the bar it fills
  (`period=168`). Volatility clustering and the daily and weekly volatility seasonality then
  survive the resampling: the |r| autocorrelation at lags 24 and 168 stays within about 0.03
  of the real series' (BTC 2021, 2023, 2025), where day-long blocks at random phases lose
  0.1-0.2 of it at lag 168.
* `remove_drift=True` subtracts the pool's mean log return from every drawn return, so the
  expected drift is 0 (the real series' trend is a return a long-only model earns without
  predicting anything).

Everything is vectorised numpy and deterministic from `seed` (an int or a tuple of ints, e.g.
`(market_seed, 0)` for the training market and `(market_seed, 1)` for the test market).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from himari_jax.data import ohlcv as data_lib

METHODS = ('iid', 'block')
# How a placebo run's markets are made (`make_markets`): a resampling method of one pool, or
# each market from its own era (`make_era_market`).
MARKET_KINDS = (*METHODS, 'era')
# One day of hourly bars: volatility regimes of crypto last days (|r| autocorrelation of BTC
# hourly returns is still 0.17 at lag 24), while shorter blocks break them more often.
DEFAULT_MEAN_BLOCK_LENGTH = 24.0
# An era's placebo: blocks of a month keep the |r| autocorrelation at a week (0.08-0.18 for
# BTC) within 0.03; a block survives 168 bars with probability (1 - 1/720)^168 = 0.79.
ERA_MEAN_BLOCK_LENGTH = 720.0
HOURS_PER_WEEK = 168

Seed = int | Sequence[int]


@dataclasses.dataclass(frozen=True)
class BarShapes:
  """The pool that synthetic bars are drawn from, every field (M,) float64.

  log_return: log(close_t / close_{t-1}); gap: log(open_t / close_{t-1}); upper:
  log(high_t / max(open_t, close_t)) >= 0; lower: log(min(open_t, close_t) / low_t) >= 0;
  volume: volume_t.
  """

  log_return: np.ndarray
  gap: np.ndarray
  upper: np.ndarray
  lower: np.ndarray
  volume: np.ndarray

  def __len__(self) -> int:
    return self.log_return.shape[0]

  def take(self, index: np.ndarray) -> BarShapes:
    """The shapes at `index` (K,) ints, in that order."""
    return BarShapes(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

  def mirror(self, flip: np.ndarray, centre: float) -> BarShapes:
    """The bars where `flip` (K,) bool is set turned upside down: the return reflected about
    `centre`, the gap negated, the upper and lower excursions swapped."""
    return BarShapes(log_return=np.where(flip, 2 * centre - self.log_return, self.log_return),
                     gap=np.where(flip, -self.gap, self.gap),
                     upper=np.where(flip, self.lower, self.upper),
                     lower=np.where(flip, self.upper, self.lower), volume=self.volume)


def _check_frame(df: pd.DataFrame, name: str) -> None:
  """Raises DataError naming the frame, bar and column of anything a shape cannot come from."""
  missing = [c for c in data_lib.COLUMNS if c not in df.columns]
  if missing:
    raise data_lib.DataError(f'{name}: missing column(s) {", ".join(missing)}; an OHLCV frame '
                             f'has columns {", ".join(data_lib.COLUMNS)}')
  if not isinstance(df.index, pd.DatetimeIndex):
    raise data_lib.DataError(f'{name}: the index must be a DatetimeIndex of bar open times, '
                             f'got {type(df.index).__name__}')
  values = {c: df[c].to_numpy(np.float64) for c in data_lib.COLUMNS}
  opn, high, low, close = (values[c] for c in data_lib.PRICE_COLUMNS)
  checks = (
      ('open', ~(opn > 0), 'must be finite and > 0'),
      ('high', ~(high >= np.maximum(opn, close)), 'must be >= max(open, close)'),
      ('low', ~((low > 0) & (low <= np.minimum(opn, close))), 'must be in (0, min(open, close)]'),
      ('close', ~(close > 0), 'must be finite and > 0'),
      ('volume', ~(values['volume'] >= 0), 'must be >= 0'),
  )
  for column, bad, rule in checks:
    where = np.flatnonzero(bad | ~np.isfinite(values[column]))
    if where.size:
      raise data_lib.DataError(f'{name}, bar {df.index[where[0]]}, column {column}: '
                               f'{values[column][where[0]]} ({column} {rule}); fix or drop '
                               f'the bar ({where.size} bars have this problem)')


def bar_shapes(frames: pd.DataFrame | Sequence[pd.DataFrame],
               freq: pd.Timedelta | str | None = None) -> BarShapes:
  """The shape of every bar that follows a bar one `freq` earlier, over one or more frames.

  Args:
    frames: OHLCV frame(s) as `data.load_ohlcv` returns them (time-sorted, UTC index).
    freq: bar spacing; defaults to the first frame's most common spacing.

  Returns:
    BarShapes of the M usable bars, frames in the order given.

  Raises:
    DataError: naming the frame, bar and column of an invalid bar, or when no bar has a
      predecessor one `freq` earlier.
  """
  frames = [frames] if isinstance(frames, pd.DataFrame) else list(frames)
  if not frames:
    raise data_lib.DataError('no frame to draw synthetic bars from; pass at least one')
  freq = data_lib.infer_freq(frames[0].index) if freq is None else pd.Timedelta(freq)
  parts = []
  for i, df in enumerate(frames):
    name = df.attrs.get('source', f'frame {i}')
    _check_frame(df, name)
    opn, high, low, close, volume = (df[c].to_numpy(np.float64) for c in data_lib.COLUMNS)
    # Bar t+1 follows bar t when it opens one freq later (in ns, whatever the index's unit).
    follows = np.diff(df.index.as_unit('ns').asi8) == freq.value
    t = np.flatnonzero(follows) + 1
    parts.append(np.stack([
        np.log(close[t] / close[t - 1]),
        np.log(opn[t] / close[t - 1]),
        np.log(high[t] / np.maximum(opn[t], close[t])),
        np.log(np.minimum(opn[t], close[t]) / low[t]),
        volume[t],
    ]))
  pool = np.concatenate(parts, axis=1)
  if not pool.shape[1]:
    raise data_lib.DataError(f'no two consecutive bars {freq} apart in the given frame(s); '
                             'synthetic bars are drawn from such pairs')
  # log() of a ratio that is >= 1 can round to -1e-17; the excursions must stay >= 0.
  pool[2:4] = np.maximum(pool[2:4], 0.0)
  return BarShapes(*pool)


def resample_indices(rng: np.random.Generator, pool_size: int, num_bars: int,
                     method: str = 'iid',
                     mean_block_length: float = DEFAULT_MEAN_BLOCK_LENGTH,
                     period: int | None = None) -> np.ndarray:
  """Indices into a pool of `pool_size` bars for `num_bars` synthetic bars.

  'iid': uniform draws. 'block': the stationary bootstrap: a new block starts at each bar
  with probability 1 / mean_block_length (always at bar 0) at a uniform position, and a
  block continues with the next pool bar, wrapping around at the end. With `period` (block
  only), a block filling bar b starts at a pool position p with `p = b (mod period)` and the
  pool is cut to whole periods, so every bar keeps its phase (hour of the week for 168).

  Returns:
    (num_bars,) int64 in [0, pool_size).
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  if pool_size < 1 or num_bars < 1:
    raise ValueError(f'pool_size and num_bars must be >= 1, got {pool_size} and {num_bars}')
  if method == 'iid':
    return rng.integers(0, pool_size, size=num_bars)
  if not mean_block_length >= 1:
    raise ValueError(f'mean_block_length must be >= 1 bar, got {mean_block_length}')
  new_block = rng.random(num_bars) < 1.0 / mean_block_length
  new_block[0] = True
  block_first_bar = np.flatnonzero(new_block)  # (blocks,)
  if period is None:
    block_start = rng.integers(0, pool_size, size=block_first_bar.size)
  else:
    if not 1 <= period <= pool_size:
      raise ValueError(f'period must be in [1, pool_size={pool_size}], got {period}')
    pool_size = pool_size // period * period
    block_start = (rng.integers(0, pool_size // period, size=block_first_bar.size) * period
                   + block_first_bar % period)
  block = np.cumsum(new_block) - 1  # block id of every bar
  offset = np.arange(num_bars) - block_first_bar[block]
  return (block_start[block] + offset) % pool_size


def build_bars(shapes: BarShapes, start_price: float) -> dict[str, np.ndarray]:
  """Prices from a sequence of bar shapes, the close before the first bar at `start_price`.

  Returns:
    {'open', 'high', 'low', 'close', 'volume'}: (K,) float64 each, K = len(shapes).
  """
  close = start_price * np.exp(np.cumsum(shapes.log_return))
  previous_close = np.concatenate([[start_price], close[:-1]])
  opn = previous_close * np.exp(shapes.gap)
  # exp(x >= 0) >= 1 and float multiplication is monotone, so the bounds hold exactly.
  high = np.maximum(opn, close) * np.exp(shapes.upper)
  low = np.minimum(opn, close) * np.exp(-shapes.lower)
  return {'open': opn, 'high': high, 'low': low, 'close': close, 'volume': shapes.volume}


def make_market(like: pd.DataFrame, *, seed: Seed, method: str = 'iid',
                mean_block_length: float = DEFAULT_MEAN_BLOCK_LENGTH,
                remove_drift: bool = False, random_signs: bool | None = None,
                num_bars: int | None = None,
                start: Any = None, start_price: float | None = None,
                pool: pd.DataFrame | Sequence[pd.DataFrame] | None = None,
                freq: pd.Timedelta | str | None = None,
                period: int | None = None) -> pd.DataFrame:
  """A synthetic OHLCV market with the bar-level behaviour of `pool` and nothing to predict.

  Args:
    like: the real frame the market stands in for; it gives the defaults below.
    seed: int or tuple of ints for `np.random.default_rng`; the same seed, options and pool
      give the same frame.
    method: 'iid' (independent bars) or 'block' (stationary block bootstrap).
    mean_block_length: mean block length in bars for 'block'.
    remove_drift: draw returns minus the pool's mean log return (expected drift 0).
    random_signs: mirror each drawn bar with probability 1/2 (see the module docstring);
      None = True for 'block' (its blocks would otherwise carry the real series' short-range
      predictability) and False for 'iid' (independent draws carry none).
    num_bars: length of the market; default `len(like)`.
    start: open time of the first bar (naive = UTC); default `like`'s first bar.
    start_price: the close before the first bar; default `like`'s first open.
    pool: frame(s) whose bars are drawn; default `like`. Pass the training and test files
      together to draw from both.
    freq: bar spacing of the pool pairs and the new index; default `like`'s.
    period: for 'block', keep every bar's phase modulo `period` bars (`resample_indices`);
      meaningful when the pool starts at the market's phase (the pool is `like`).

  Returns:
    DataFrame like `data.load_ohlcv`'s: UTC DatetimeIndex 'timestamp' on a regular `freq`
    grid (no gaps), float64 columns open, high, low, close, volume; `attrs['source']` names
    the method and seed, `attrs['gaps']` is the (empty) gap report and `attrs['synthetic']`
    holds the options.
  """
  freq = data_lib.infer_freq(like.index) if freq is None else pd.Timedelta(freq)
  shapes = bar_shapes(like if pool is None else pool, freq)
  num_bars = len(like) if num_bars is None else int(num_bars)
  start = pd.Timestamp(like.index[0] if start is None else start)
  start = start.tz_localize('UTC') if start.tzinfo is None else start.tz_convert('UTC')
  if start_price is None:
    start_price = float(like['open'].iloc[0])
  if not (np.isfinite(start_price) and start_price > 0):
    raise ValueError(f'start_price must be finite and > 0, got {start_price}')

  rng = np.random.default_rng(seed)
  drawn = shapes.take(resample_indices(rng, len(shapes), num_bars, method, mean_block_length,
                                      period))
  drift = shapes.log_return.mean()
  if random_signs is None:
    random_signs = method == 'block'
  if random_signs:
    drawn = drawn.mirror(rng.random(num_bars) < 0.5, drift)
  if remove_drift:
    drawn = dataclasses.replace(drawn, log_return=drawn.log_return - drift)
  # Nanoseconds, as data.load_ohlcv gives (find_gaps and features read asi8 as ns).
  index = pd.date_range(start, periods=num_bars, freq=freq, name='timestamp').as_unit('ns')
  df = pd.DataFrame(build_bars(drawn, start_price), index=index)
  seed_text = seed if isinstance(seed, int) else tuple(int(s) for s in seed)
  df.attrs['source'] = f'synthetic {method} market (seed {seed_text})'
  df.attrs['gaps'] = data_lib.find_gaps(df, freq).to_dict()
  df.attrs['synthetic'] = {
      'method': method, 'seed': seed_text, 'remove_drift': bool(remove_drift),
      'random_signs': bool(random_signs),
      'mean_block_length': float(mean_block_length) if method == 'block' else None,
      'period': period, 'pool_bars': len(shapes)}
  return df


def make_era_market(like: pd.DataFrame, *, seed: Seed,
                    mean_block_length: float = ERA_MEAN_BLOCK_LENGTH,
                    period: int = HOURS_PER_WEEK, remove_drift: bool = False) -> pd.DataFrame:
  """A placebo of one era drawn from the era's own bars (module docstring).

  Month-long blocks at the bars' own hour of the week, each bar mirrored with probability
  1/2: the era's drift (in expectation) and volatility, its volatility clustering and
  seasonality, and directions that cannot be read from the past.

  Args:
    like: the era's hourly bars (at least `period` of them); the market has its length,
      first bar and first price.
    seed, remove_drift: as in `make_market`.
    mean_block_length: mean block length in bars; period: bars of one seasonal cycle.

  Returns:
    `make_market`'s frame.
  """
  return make_market(like, seed=seed, method='block', mean_block_length=mean_block_length,
                     remove_drift=remove_drift, random_signs=True, pool=like, period=period)


def make_markets(likes: Sequence[pd.DataFrame], *, seed: int,
                 pool: pd.DataFrame | Sequence[pd.DataFrame] | None = None,
                 **options: Any) -> list[pd.DataFrame]:
  """One synthetic market per real frame (e.g. the training and test files), for one seed.

  Market i is `make_market(likes[i], seed=(seed, i), pool=pool, **options)`: the same length,
  first bar and first price as its real frame, independent of the others, all drawn from one
  pool (default: every frame of `likes`, so a placebo test market has the bars of the real
  test period as well as the training period's). With `method='era'` market i is
  `make_era_market(likes[i], seed=(seed, i), **options)`, drawn from its own frame only.

  Returns:
    The markets, in the order of `likes`.
  """
  likes = list(likes)
  if options.get('method') == 'era':
    if pool is not None:
      raise ValueError("method='era' draws each market from its own frame; pass no pool")
    era_options = {k: v for k, v in options.items() if k != 'method'}
    return [make_era_market(like, seed=(seed, i), **era_options)
            for i, like in enumerate(likes)]
  pool = likes if pool is None else pool
  return [make_market(like, seed=(seed, i), pool=pool, **options)
          for i, like in enumerate(likes)]
