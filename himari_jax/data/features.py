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

Feature sets (`FEATURE_SETS`): 'himari' is the state above, normalised. 'seed_exact' is the
22-column input the original HIMARI training script computed (SPEC 3, "The seed's own input"),
raw and zero-padded to 60; seven of its columns average over centred windows and so see up to
83 bars ahead: it exists only to reproduce a seed checkpoint's own numbers. 'seed_causal' is the
same 22 columns with every centred mean replaced by the trailing one ending at t, the honest
input for scoring and fine-tuning converted seed checkpoints. 'himari_market' puts market context
(BTC, the equal-weight universe, the coin's cross-sectional rank, breadth) in the reserved
columns 49-59; it needs a universe panel (`data.market_features`). `leak_audit` measures
look-ahead per column by recomputing on prefixes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from himari_jax.data import ohlcv as data_lib

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

# The seed's 22 columns (SPEC 3, "The seed's own input"), then zeros up to NUM_FEATURES.
SEED_NUM_COMPUTED = 22
SEED_FEATURE_NAMES: tuple[str, ...] = (
    'ret_1', 'ret_6', 'ret_24', 'ret_72', 'ret_168',
    'close_ma_12', 'close_ma_24', 'close_ma_72', 'close_ma_168',
    'close_std_12', 'close_std_24', 'close_std_72', 'close_std_168',
    'rsi_14',
    'volume_ratio_24', 'volume_std_24', 'close_volume_corr_24',
    'range', 'range_ma_24',
    'momentum_12', 'momentum_24', 'momentum_72',
    *(f'padding_{j}' for j in range(SEED_NUM_COMPUTED, NUM_FEATURES)),
)
# Seed columns built on a k-bar mean M_k. The seed's np.convolve(x, ones(k) / k, 'same')
# averages bars t - k // 2 .. t + (k - 1) // 2, so each of these sees (k - 1) // 2 bars ahead.
SEED_MEAN_WINDOWS: dict[str, int] = {
    'close_ma_12': 12, 'close_ma_24': 24, 'close_ma_72': 72, 'close_ma_168': 168,
    'rsi_14': 14, 'volume_ratio_24': 24, 'range_ma_24': 24,
}
SEED_LOOKAHEAD_BARS: dict[str, int] = {
    name: (k - 1) // 2 for name, k in SEED_MEAN_WINDOWS.items()}


class FeatureSetError(ValueError):
  """An unknown feature set, or a model scored or trained on inputs it must not see."""


@dataclasses.dataclass(frozen=True)
class FeatureSet:
  """What `compute_features(df, name)` returns and how a model consumes it.

  Attributes:
    name: the key in FEATURE_SETS (`config.data.feature_set`).
    columns: the NUM_FEATURES column names.
    normalised: whether a Normalizer is fitted on the training split; seed sets are fed raw,
      as the seed was trained (`Normalizer.identity()`).
    lookahead_bars: how far ahead the furthest-looking column sees (0 = causal).
    description: one line for help texts and reports.
  """
  name: str
  columns: tuple[str, ...]
  normalised: bool
  lookahead_bars: int
  description: str


# 'himari_market': the 49 'himari' columns, then 11 market-context columns in the reserved
# slots; they need the other coins, so `data.market_features.panel_features` computes them.
MARKET_FEATURE_NAMES: tuple[str, ...] = (
    'btc_ret_1', 'btc_ret_6', 'btc_ret_24', 'btc_vol_24', 'btc_vol_168',
    'market_ret_1', 'market_ret_24', 'rank_ret_24', 'rank_ret_168', 'breadth_24', 'breadth_168')
FEATURE_SETS: dict[str, FeatureSet] = {
    'himari': FeatureSet(
        'himari', FEATURE_NAMES, normalised=True, lookahead_bars=0,
        description='the 49 causal features of SPEC 3 plus 11 reserved zeros, normalised'),
    'seed_exact': FeatureSet(
        'seed_exact', SEED_FEATURE_NAMES, normalised=False,
        lookahead_bars=max(SEED_LOOKAHEAD_BARS.values()),
        description="the seed's 22 raw features exactly as its training computed them, "
                    'centred means (look-ahead) included; for reproduction only'),
    'seed_causal': FeatureSet(
        'seed_causal', SEED_FEATURE_NAMES, normalised=False, lookahead_bars=0,
        description="the seed's 22 raw features with trailing means instead of centred ones"),
    'himari_market': FeatureSet(
        'himari_market', FEATURE_NAMES[:NUM_COMPUTED] + MARKET_FEATURE_NAMES, normalised=True,
        lookahead_bars=0, description="the 'himari' features plus BTC, equal-weight market, "
                                      'cross-sectional rank and breadth context in 49-59'),
}
DEFAULT_FEATURE_SET = 'himari'


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


def compute_features(df: pd.DataFrame, feature_set: str = DEFAULT_FEATURE_SET) -> np.ndarray:
  """The SPEC section 3 state of every bar.

  Args:
    df: OHLCV frame (see `data.load_ohlcv`): UTC DatetimeIndex, columns open, high, low,
      close, volume; N rows in time order.
    feature_set: a key of FEATURE_SETS. What follows describes 'himari'; the seed sets give
      `seed_features` (22 raw columns) then zeros, and under 'seed_exact' row t also depends
      on up to 83 later rows.

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
  if get_feature_set(feature_set).name == 'himari_market':  # also rejects unknown names
    raise FeatureSetError("feature set 'himari_market' needs the other coins of a universe; "
                          'compute it with data.market_features.panel_features(panel)')
  if feature_set != 'himari':
    return _pad(_seed_columns(h, low, c, v, causal=feature_set == 'seed_causal'))
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


# ------------------------------------------------------------------ the seed's input


def _seed_mean(x: np.ndarray, k: int, causal: bool) -> np.ndarray:
  """The seed's M_k: sum of x over a k-bar window / k, bars outside the series counting 0.

  Centred, this is the seed's `np.convolve(x, ones(k) / k, 'same')` (bars t - k // 2 ..
  t + (k - 1) // 2); causal, the window is bars t - k + 1 .. t. Both are slices of the full
  convolution, whose entry i averages bars i - k + 1 .. i.
  """
  full = np.convolve(x, np.full(k, 1.0 / k))
  start = 0 if causal else (k - 1) // 2
  return full[start:start + len(x)]


def _lagged_windows(x: np.ndarray, k: int) -> np.ndarray:
  """(N - k, k): row i holds x_{t-k} .. x_{t-1} for t = k + i (the k bars before t)."""
  if len(x) <= k:  # no bar has k bars before it yet
    return np.zeros((0, k))
  return np.lib.stride_tricks.sliding_window_view(x, k)[:len(x) - k]


def _from_bar(k: int, values: np.ndarray, n: int) -> np.ndarray:
  """values (N - k,) placed at rows k.. of a length-N column; rows < k are 0 (the seed's)."""
  out = np.zeros(n)
  out[k:] = values  # empty when n <= k
  return out


def _seed_columns(h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray,
                  causal: bool) -> np.ndarray:
  """float64 (N, 22): the seed's columns from float64 (N,) high, low, close, volume."""
  n = len(c)
  lagged = {k: c[:max(n - k, 0)] for k in (1, 6, 12, 24, 72, 168)}  # c_{t-k} for t = k..
  cols: list[np.ndarray] = []
  with np.errstate(divide='ignore', invalid='ignore'):
    cols += [_from_bar(k, (c[k:] - lagged[k]) / lagged[k], n) for k in (1, 6, 24, 72, 168)]
    for k in (12, 24, 72, 168):
      mean = _seed_mean(c, k, causal)
      cols.append((c - mean) / mean)
    cols += [_from_bar(k, _lagged_windows(c, k).std(axis=1) / c[k:], n)
             for k in (12, 24, 72, 168)]

    delta = np.diff(c, prepend=c[:1])
    gain = _seed_mean(np.maximum(delta, 0.0), 14, causal)
    loss = _seed_mean(np.maximum(-delta, 0.0), 14, causal)
    rsi = 100.0 - 100.0 / (1.0 + gain / (loss + 1e-8))
    cols.append((rsi - 50.0) / 50.0)

    cols.append(v / (_seed_mean(v, 24, causal) + 1e-8))
    cols.append(_from_bar(24, _lagged_windows(v, 24).std(axis=1) / (v[24:] + 1e-8), n))
    dc = _lagged_windows(c, 24) - _lagged_windows(c, 24).mean(axis=1, keepdims=True)
    dv = _lagged_windows(v, 24) - _lagged_windows(v, 24).mean(axis=1, keepdims=True)
    corr = (dc * dv).sum(axis=1) / np.sqrt((dc * dc).sum(axis=1) * (dv * dv).sum(axis=1))
    cols.append(_from_bar(24, np.clip(corr, -1.0, 1.0), n))  # clipped as np.corrcoef does

    bar_range = (h - low) / c
    cols += [bar_range, _seed_mean(bar_range, 24, causal)]
    cols += [_from_bar(k, (c[k:] - lagged[k]) / c[k:], n) for k in (12, 24, 72)]
  out = np.stack(cols, axis=1)
  out[~np.isfinite(out)] = 0.0  # the seed's NaN / inf -> 0 (flat windows, zero prices)
  return out


def seed_features(df: pd.DataFrame, causal: bool = False) -> np.ndarray:
  """The seed's 22 input columns (SPEC 3, "The seed's own input") in float64.

  Args:
    df: OHLCV frame as for `compute_features`; N rows in time order.
    causal: False reproduces the seed ('seed_exact': centred means, which see up to 83 bars
      ahead); True replaces every centred mean by the trailing one ending at t ('seed_causal').

  Returns:
    float64 (N, 22), raw (not normalised), columns SEED_FEATURE_NAMES[:22]. Returns,
    rolling stds, the correlation and momentum are 0 before their window is full; the means
    treat bars outside the series as 0, as the seed's convolution does.
  """
  h, low, c, v = (df[k].to_numpy(np.float64) for k in ('high', 'low', 'close', 'volume'))
  return _seed_columns(h, low, c, v, causal)


def _pad(columns: np.ndarray) -> np.ndarray:
  """(N, m) -> float32 (N, NUM_FEATURES), zeros after column m."""
  out = np.zeros((len(columns), NUM_FEATURES), np.float32)
  out[:, :columns.shape[1]] = columns
  return out


# ------------------------------------------------------------------ feature-set guards


def get_feature_set(name: str) -> FeatureSet:
  """FEATURE_SETS[name]; FeatureSetError naming the valid sets otherwise."""
  if name not in FEATURE_SETS:
    raise FeatureSetError(f'unknown feature set {name!r}; valid: {", ".join(FEATURE_SETS)}')
  return FEATURE_SETS[name]


def needs_normalization(feature_set: str) -> bool:
  """Whether models on this set see normalised features (fit a Normalizer on training rows)."""
  return get_feature_set(feature_set).normalised


def looks_ahead(feature_set: str) -> bool:
  """Whether row t of this set depends on bars after t."""
  return get_feature_set(feature_set).lookahead_bars > 0


def feature_set_of(config: Any) -> str:
  """The feature set of a run's config (a ConfigDict with `.data`): `config.data.feature_set`,
  checked (a saved run from before feature sets has 'himari', `config.upgrade_saved_config`)."""
  return get_feature_set(config.data.feature_set).name


def lookahead_warning(feature_set: str) -> str | None:
  """The caveat every report on this set must carry first (console, JSON, HTML); None for a
  causal set."""
  spec = get_feature_set(feature_set)
  if not spec.lookahead_bars:
    return None
  return (f"LOOK-AHEAD: feature set '{spec.name}' uses centred moving averages, so the inputs "
          f'see up to {spec.lookahead_bars} bars into the future; the result is not evidence '
          "of skill (reproduction of the seed's own numbers only).")


def check_feature_set(trained_with: str, requested: str) -> None:
  """Refuses to score a model with features other than those it was trained on.

  Raises:
    FeatureSetError: either name is unknown, or they differ.
  """
  get_feature_set(trained_with)
  get_feature_set(requested)
  if trained_with != requested:
    raise FeatureSetError(
        f"the model was trained on feature set '{trained_with}' but would be scored with "
        f"'{requested}': its weights would read other inputs in the same columns and its "
        f"predictions would mean nothing. Score it with config.data.feature_set={trained_with} "
        '(a converted .pt can be converted again with another --feature_set).')


def check_training_feature_set(feature_set: str, allow_lookahead: bool = False) -> None:
  """Refuses to train on a set that sees the future unless `allow_lookahead` is given.

  Raises:
    FeatureSetError: unknown set, or a look-ahead set without allow_lookahead=True.
  """
  spec = get_feature_set(feature_set)
  if spec.lookahead_bars and not allow_lookahead:
    raise FeatureSetError(
        f"config.data.feature_set='{spec.name}' sees up to {spec.lookahead_bars} bars into the "
        "future (centred moving averages); a model trained on it learns the future. Use "
        "'seed_causal', or pass --config.data.allow_lookahead=True to reproduce the seed "
        'knowingly.')


def leak_audit(df: pd.DataFrame, feature_set: str, cuts: Any, *, rtol: float = 1e-6,
               atol: float = 1e-7) -> pd.DataFrame:
  """How many bars ahead each column looks, measured by recomputing features on prefixes.

  For each cut, `compute_features(df[:cut])` is compared with the first `cut` rows of
  `compute_features(df)`; a row t < cut that changes depended on bar `cut` or later, so the
  column sees at least `cut - t` bars ahead. The largest such distance over all cuts is the
  column's leak (0: every row was prefix-invariant at every cut).

  Args:
    df: OHLCV frame, N rows.
    feature_set: a key of FEATURE_SETS.
    cuts: prefix lengths, each in 1 .. N - 1.
    rtol, atol: a change counts when |prefix - full| > atol + rtol * |full|.

  Returns:
    A frame indexed by column number (0 .. 59) with `name`, `leak_bars` (int) and
    `max_abs_change` (largest change seen in any prefix row).
  """
  full = compute_features(df, feature_set)
  leak = np.zeros(NUM_FEATURES, np.int64)
  change = np.zeros(NUM_FEATURES)
  for cut in (int(cut) for cut in cuts):
    if not 0 < cut < len(df):
      raise ValueError(f'leak_audit cut {cut} is outside 1 .. {len(df) - 1} (the frame has '
                       f'{len(df)} rows)')
    prefix = compute_features(df.iloc[:cut], feature_set).astype(np.float64)
    reference = full[:cut].astype(np.float64)
    diff = np.abs(prefix - reference)
    changed = diff > atol + rtol * np.abs(reference)
    rows = np.where(changed.any(axis=0), changed.argmax(axis=0), cut)
    leak = np.maximum(leak, cut - rows)
    change = np.maximum(change, diff.max(axis=0))
  return pd.DataFrame({'name': get_feature_set(feature_set).columns, 'leak_bars': leak,
                       'max_abs_change': change}, index=pd.RangeIndex(NUM_FEATURES, name='column'))


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per-column standardisation fitted on training rows: clip((x - mean) / std, +-clip).

  Attributes:
    mean: float32 (60,).
    std: float32 (60,); columns that are constant on the training rows (reserved zeros,
      flat inputs) get std 1, so they map to x - mean instead of NaN.
    clip: bound of the output (CLIP), or None for no clipping (`identity`).
  """
  mean: np.ndarray
  std: np.ndarray
  clip: float | None = CLIP

  @classmethod
  def identity(cls, num_features: int = NUM_FEATURES) -> Normalizer:
    """x -> x, unclipped: the seed fed its features raw, however large."""
    return cls(mean=np.zeros(num_features, np.float32), std=np.ones(num_features, np.float32),
               clip=None)

  @property
  def is_identity(self) -> bool:
    return self.clip is None and not self.mean.any() and bool((self.std == 1).all())

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
    out = (features - self.mean) / self.std
    return out if self.clip is None else out.clip(-self.clip, self.clip)

  __call__ = apply

  def to_dict(self) -> dict[str, Any]:
    return {'mean': self.mean.tolist(), 'std': self.std.tolist(), 'clip': self.clip}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Normalizer:
    """Inverse of to_dict; statistics saved before `clip` existed were clipped at CLIP."""
    mean, std = np.asarray(d['mean'], np.float32), np.asarray(d['std'], np.float32)
    if mean.shape != (NUM_FEATURES,) or std.shape != (NUM_FEATURES,):
      raise ValueError(f'normaliser statistics must have shape ({NUM_FEATURES},), got mean '
                       f'{mean.shape} and std {std.shape}')
    clip = d.get('clip', CLIP)
    return cls(mean=mean, std=std, clip=None if clip is None else float(clip))


def fit_normalizer(feature_set: str, features: np.ndarray,
                   mask: np.ndarray | None = None) -> Normalizer:
  """The normaliser a model on `feature_set` is trained and scored with: fitted on
  features[mask] ((N, 60), mask bool (N,)) for a normalised set, the identity for the seed
  sets."""
  if needs_normalization(feature_set):
    return Normalizer.fit(features, mask)
  return Normalizer.identity(np.shape(features)[-1])
