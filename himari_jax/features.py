"""The 60-column state of SPEC section 3 (49 computed + 11 reserved) and its normaliser.

Every value at bar t uses bars <= t only: trailing rolling windows (which include t), and
recursive filters (EMAs, Wilder smoothing) that run forward in time. Conventions:

- `r_t = close_t / close_{t-1} - 1`; standard deviations are population ones (ddof = 0)
  everywhere, Bollinger bands included.
- EMA_k: alpha = 2 / (k + 1), seeded at the first value (pandas `ewm(adjust=False)`).
- Wilder smoothing (RSI, ATR, ADX): alpha = 1 / 14, seeded with the mean of the first 14
  inputs, as in Wilder's book and TA-Lib.
- A ratio whose denominator is 0 (zero-volume bars, flat windows) is 0, so every output is
  finite; Bollinger %B and stochastic %K of a flat window are mid-range (0.5, scaled 0),
  where the close then sits.
- Values a feature cannot have yet (fewer bars than its window) are 0; rows < WARMUP_BARS
  must not be trained on. `FEATURE_WARMUP[j]` is the first defined row of column j.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from himari_jax import data as data_lib

NUM_FEATURES = 60
NUM_COMPUTED = 49
CLIP = 10.0  # normalised features are clipped to +-CLIP

FEATURE_NAMES: tuple[str, ...] = (
    'ret_1', 'ret_6', 'ret_24', 'ret_72', 'ret_168',
    'close_sma_12', 'close_sma_24', 'close_sma_72', 'close_sma_168',
    'vol_12', 'vol_24', 'vol_72', 'vol_168',
    'rsi_14',
    'volume_ratio_24', 'volume_zscore_24', 'volume_trend_24_168', 'ret_volume_corr_24',
    'range', 'range_mean_24',
    'momentum_12', 'momentum_24', 'momentum_72',
    'close_ema_12', 'close_ema_26',
    'macd', 'macd_signal', 'macd_hist',
    'bollinger_pctb', 'bollinger_width',
    'atr_14',
    'stoch_k_14', 'stoch_d_3',
    'adx_14',
    'cci_20',
    'obv_flow_24',
    'dist_high_24', 'dist_high_168', 'dist_low_24', 'dist_low_168',
    'skew_168',
    'parkinson_24', 'garman_klass_24',
    'vol_ratio_24_168',
    'autocorr_168',
    'hour_sin', 'hour_cos', 'dow_sin', 'dow_cos',
    *(f'reserved_{i}' for i in range(NUM_FEATURES - NUM_COMPUTED)),
)

# First row at which each column is defined (needs that many earlier bars).
FEATURE_WARMUP: tuple[int, ...] = (
    1, 6, 24, 72, 168,  # returns
    11, 23, 71, 167,  # close / SMA_k: k bars including t
    12, 24, 72, 168,  # std of k returns, the first return is at bar 1
    14,  # RSI: 14 price changes, Wilder-seeded
    23, 23, 167, 24,  # volume ratio, z-score, trend; correlation of 24 returns
    0, 23,  # range, its 24-bar mean
    12, 24, 72,  # momentum
    0, 0, 0, 0, 0,  # EMAs are seeded at the first bar
    19, 19,  # Bollinger(20)
    14,  # ATR(14): 14 true ranges from bar 1
    13, 15,  # stochastic %K(14), %D = SMA_3 of %K
    27,  # ADX: DX from bar 14, then Wilder(14) of DX
    19,  # CCI(20)
    24,  # OBV flow: 24 signed volumes from bar 1
    23, 167, 23, 167,  # distance from rolling high / low
    168,  # skewness of 168 returns
    23, 23,  # Parkinson, Garman-Klass
    168,  # ratio of 24- to 168-bar volatility
    168,  # lag-1 autocorrelation within the last 168 returns
    0, 0, 0, 0,  # calendar
    *(0,) * (NUM_FEATURES - NUM_COMPUTED),
)
WARMUP_BARS = max(FEATURE_WARMUP)

_WILDER = 14


def _div(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
  """num / den, `empty` where den == 0 (zero volume, flat windows)."""
  out = np.full(np.broadcast(num, den).shape, empty)
  np.divide(num, den, out=out, where=den != 0)
  return out


def _ratio_minus_one(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den - 1, 0 where den == 0."""
  return np.where(den != 0, _div(num, den) - 1.0, 0.0)


def _rolling(x: np.ndarray, k: int) -> pd.core.window.Rolling:
  return pd.Series(x).rolling(k, min_periods=k)


def _std(x: np.ndarray, k: int) -> np.ndarray:
  return _rolling(x, k).std(ddof=0).to_numpy()


def _ema(x: np.ndarray, k: int) -> np.ndarray:
  return pd.Series(x).ewm(alpha=2.0 / (k + 1), adjust=False).mean().to_numpy()


def _wilder(x: np.ndarray, start: int, n: int = _WILDER) -> np.ndarray:
  """Wilder smoothing of x[start:]: the first value (at start + n - 1) is the mean of n inputs,
  then y_t = y_{t-1} + (x_t - y_{t-1}) / n. Earlier rows are NaN."""
  out = np.full(len(x), np.nan)
  first = start + n - 1
  if len(x) > first:
    seeded = np.concatenate([[x[start:first + 1].mean()], x[first + 1:]])
    out[first:] = pd.Series(seeded).ewm(alpha=1.0 / n, adjust=False).mean().to_numpy()
  return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
  """x_{t-k} (NaN for t < k)."""
  out = np.full(len(x), np.nan)
  if len(x) > k:
    out[k:] = x[:len(x) - k]
  return out


def compute_features(df: pd.DataFrame) -> np.ndarray:
  """The SPEC section 3 state of every bar.

  Args:
    df: OHLCV frame (see `data.load_ohlcv`): UTC DatetimeIndex, columns open, high, low,
      close, volume; N rows in time order.

  Returns:
    float32 (N, 60): row t depends on rows <= t only; columns follow FEATURE_NAMES; rows
    before a column's warm-up (FEATURE_WARMUP) are 0; columns 49-59 are reserved zeros.

  Raises:
    data.DataError: for a frame that is unsorted, has duplicate times or NaN / inf values
      (rolling windows would silently mix bars), naming the row and the fix.
  """
  data_lib.check_frame(df, 'compute_features input')
  o, h, low, c, v = (df[k].to_numpy(np.float64) for k in ('open', 'high', 'low', 'close',
                                                          'volume'))
  n = len(c)
  c_prev = _shift(c, 1)
  r = c / c_prev - 1.0  # NaN at bar 0, so windows over r start at bar 1
  cols: list[np.ndarray] = []

  cols += [c / _shift(c, k) - 1.0 for k in (1, 6, 24, 72, 168)]
  cols += [c / _rolling(c, k).mean().to_numpy() - 1.0 for k in (12, 24, 72, 168)]
  vol = {k: _std(r, k) for k in (12, 24, 72, 168)}
  cols += [vol[k] for k in (12, 24, 72, 168)]

  change = c - c_prev
  gain = _wilder(np.maximum(change, 0.0), start=1)
  loss = _wilder(np.maximum(-change, 0.0), start=1)
  cols.append(_div(gain - loss, gain + loss))  # (RSI - 50) / 50 with RSI = 100 g / (g + l)

  v_mean24 = _rolling(v, 24).mean().to_numpy()
  v_mean168 = _rolling(v, 168).mean().to_numpy()
  cols.append(_ratio_minus_one(v, v_mean24))
  cols.append(_div(v - v_mean24, _std(v, 24)))
  cols.append(_ratio_minus_one(v_mean24, v_mean168))
  dv = _ratio_minus_one(v, _shift(v, 1))  # volume change; 0 after a zero-volume bar
  dv[0] = np.nan
  cov = pd.Series(r).rolling(24, min_periods=24).cov(pd.Series(dv), ddof=0).to_numpy()
  cols.append(np.clip(_div(cov, _std(r, 24) * _std(dv, 24)), -1.0, 1.0))

  bar_range = (h - low) / c
  cols += [bar_range, _rolling(bar_range, 24).mean().to_numpy()]
  cols += [(c - _shift(c, k)) / c for k in (12, 24, 72)]

  ema12, ema26 = _ema(c, 12), _ema(c, 26)
  macd = (ema12 - ema26) / c
  signal = _ema(macd, 9)
  cols += [c / ema12 - 1.0, c / ema26 - 1.0, macd, signal, macd - signal]

  mid = _rolling(c, 20).mean().to_numpy()
  band = 2.0 * _std(c, 20)
  cols.append(_div(c - (mid - band), 2.0 * band, empty=0.5))
  cols.append(2.0 * band / mid)

  true_range = np.fmax(h - low, np.fmax(np.abs(h - c_prev), np.abs(low - c_prev)))
  atr = _wilder(true_range, start=1)
  cols.append(atr / c)

  hh14 = _rolling(h, 14).max().to_numpy()
  ll14 = _rolling(low, 14).min().to_numpy()
  stoch_k = 2.0 * _div(c - ll14, hh14 - ll14, empty=0.5) - 1.0
  cols += [stoch_k, _rolling(stoch_k, 3).mean().to_numpy()]

  up, down = h - _shift(h, 1), _shift(low, 1) - low
  plus_dm = np.where((up > down) & (up > 0), up, 0.0)
  minus_dm = np.where((down > up) & (down > 0), down, 0.0)
  plus_di, minus_di = _div(_wilder(plus_dm, 1), atr), _div(_wilder(minus_dm, 1), atr)
  dx = _div(np.abs(plus_di - minus_di), plus_di + minus_di)
  cols.append(_wilder(dx, start=_WILDER))  # ADX / 100: DI ratios are kept in [0, 1]

  typical = (h + low + c) / 3.0
  cols.append(_cci(typical, 20) / 100.0)

  signed_volume = np.sign(change) * v
  cols.append(_div(_rolling(signed_volume, 24).sum().to_numpy(),
                   _rolling(_where_defined(v, 1), 24).sum().to_numpy()))

  for k in (24, 168):
    cols.append(c / _rolling(h, k).max().to_numpy() - 1.0)
  for k in (24, 168):
    cols.append(c / _rolling(low, k).min().to_numpy() - 1.0)

  cols.append(_skew(r, 168))
  log_hl2 = np.log(h / low) ** 2
  cols.append(np.sqrt(_rolling(log_hl2, 24).mean().to_numpy() / (4.0 * np.log(2.0))))
  gk = 0.5 * log_hl2 - (2.0 * np.log(2.0) - 1.0) * np.log(c / o) ** 2
  cols.append(np.sqrt(np.maximum(_rolling(gk, 24).mean().to_numpy(), 0.0)))
  cols.append(_ratio_minus_one(vol[24], vol[168]))
  cols.append(_autocorr(r, 168))

  hour = df.index.hour.to_numpy()
  dow = df.index.day_of_week.to_numpy()
  cols += [np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
           np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)]

  out = np.zeros((n, NUM_FEATURES), np.float32)
  out[:, :NUM_COMPUTED] = np.stack(cols, axis=1)
  warm = np.arange(n)[:, None] < np.asarray(FEATURE_WARMUP)[None, :]
  out[warm] = 0.0
  return out


def _where_defined(x: np.ndarray, start: int) -> np.ndarray:
  """x with rows < start set to NaN, so windows over it begin at `start` like r does."""
  out = x.astype(np.float64, copy=True)
  out[:start] = np.nan
  return out


def _cci(typical: np.ndarray, k: int) -> np.ndarray:
  """(tp - SMA_k(tp)) / (0.015 * mean |tp - SMA_k(tp)|) over the trailing k bars."""
  out = np.full(len(typical), np.nan)
  if len(typical) >= k:
    windows = np.lib.stride_tricks.sliding_window_view(typical, k)
    mean = windows.mean(axis=1)
    mad = np.abs(windows - mean[:, None]).mean(axis=1)
    out[k - 1:] = _div(typical[k - 1:] - mean, 0.015 * mad)
  return out


def _skew(r: np.ndarray, k: int) -> np.ndarray:
  """Population skewness m3 / m2^1.5 of the trailing k values (0 for a flat window)."""
  out = np.full(len(r), np.nan)
  if len(r) > k:
    windows = np.lib.stride_tricks.sliding_window_view(r[1:], k)  # r starts at bar 1
    dev = windows - windows.mean(axis=1, keepdims=True)
    m2 = (dev * dev).mean(axis=1)
    m3 = (dev * dev * dev).mean(axis=1)
    out[k:] = _div(m3, m2 ** 1.5)
  return out


def _autocorr(r: np.ndarray, k: int) -> np.ndarray:
  """Pearson correlation of (r_{s-1}, r_s) over the k - 1 pairs of the last k returns."""
  out = np.full(len(r), np.nan)
  if len(r) > k:
    windows = np.lib.stride_tricks.sliding_window_view(r[1:], k)
    x, y = windows[:, :-1], windows[:, 1:]
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    out[k:] = np.clip(_div((dx * dy).sum(axis=1), den), -1.0, 1.0)
  return out


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per-column standardisation fitted on training rows: clip((x - mean) / std, +-CLIP).

  Attributes:
    mean: float32 (60,).
    std: float32 (60,); columns that are constant on the training rows (reserved zeros,
      flat inputs) get std 1, so they map to x - mean instead of NaN.
  """
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, features: np.ndarray, mask: np.ndarray | None = None) -> Normalizer:
    """Statistics of features[mask] ((N, 60), mask bool (N,); None = every row)."""
    rows = np.asarray(features, np.float64)
    if mask is not None:
      rows = rows[np.asarray(mask, bool)]
    if not len(rows):
      raise ValueError('Normalizer.fit got no rows; the training split is empty')
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

  def apply(self, features: Any) -> Any:
    """(..., 60) -> (..., 60) normalised; numpy in, numpy out; jax arrays also work."""
    return ((features - self.mean) / self.std).clip(-CLIP, CLIP)

  __call__ = apply

  def to_dict(self) -> dict[str, list[float]]:
    return {'mean': self.mean.tolist(), 'std': self.std.tolist()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Normalizer:
    mean, std = np.asarray(d['mean'], np.float32), np.asarray(d['std'], np.float32)
    if mean.shape != (NUM_FEATURES,) or std.shape != (NUM_FEATURES,):
      raise ValueError(f'normaliser statistics must have shape ({NUM_FEATURES},), got mean '
                       f'{mean.shape} and std {std.shape}')
    return cls(mean=mean, std=std)
