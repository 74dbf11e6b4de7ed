"""The seed's 22 input columns computed bar by bar from the formulas of SPEC 3 ("The seed's own
input"), independently of himari_jax.data.features: loops over bars and explicit windows, no
convolution, no sliding views. Shared by test_features.py and test_convert.py as ground truth.
"""

import math

import numpy as np


def centred_mean(x, t, k):
  """M_k(x)_t of `np.convolve(x, ones(k) / k, 'same')`: bars t - k // 2 .. t + (k - 1) // 2,
  bars outside the series counting 0."""
  return sum(x[s] for s in range(t - k // 2, t + (k - 1) // 2 + 1) if 0 <= s < len(x)) / k


def trailing_mean(x, t, k):
  """The causal counterpart: bars t - k + 1 .. t, bars before the series counting 0."""
  return sum(x[s] for s in range(t - k + 1, t + 1) if s >= 0) / k


def _finite(value):
  return value if math.isfinite(value) else 0.0


def _seed_row(h, low, c, v, t, mean, gains, losses, bar_range):
  """The 22 seed features of bar t (float64 list) from float64 arrays of the whole series."""
  row = [(c[t] - c[t - k]) / c[t - k] if t >= k else 0.0 for k in (1, 6, 24, 72, 168)]
  for k in (12, 24, 72, 168):
    m = mean(c, t, k)
    row.append((c[t] - m) / m)
  row += [np.std(c[t - k:t]) / c[t] if t >= k else 0.0 for k in (12, 24, 72, 168)]
  rsi = 100 - 100 / (1 + mean(gains, t, 14) / (mean(losses, t, 14) + 1e-8))
  row.append((rsi - 50) / 50)
  row.append(v[t] / (mean(v, t, 24) + 1e-8))
  row.append(np.std(v[t - 24:t]) / (v[t] + 1e-8) if t >= 24 else 0.0)
  if t >= 24:
    with np.errstate(invalid='ignore', divide='ignore'):
      row.append(float(np.corrcoef(c[t - 24:t], v[t - 24:t])[0, 1]))
  else:
    row.append(0.0)
  row.append(bar_range[t])
  row.append(mean(bar_range, t, 24))
  row += [(c[t] - c[t - k]) / c[t] if t >= k else 0.0 for k in (12, 24, 72)]
  return [_finite(float(x)) for x in row]


def seed_matrix(df, rows, causal=False):
  """float64 (len(rows), 22): the seed's features of the given bars of an OHLCV frame, with
  centred means (the seed) or trailing ones (causal=True)."""
  h, low, c, v = (df[k].to_numpy(np.float64) for k in ('high', 'low', 'close', 'volume'))
  delta = [0.0] + [c[s] - c[s - 1] for s in range(1, len(c))]  # diff(c, prepend=c_0)
  gains, losses = [max(d, 0.0) for d in delta], [max(-d, 0.0) for d in delta]
  bar_range = [(h[s] - low[s]) / c[s] for s in range(len(c))]
  mean = trailing_mean if causal else centred_mean
  return np.array([_seed_row(h, low, c, v, t, mean, gains, losses, bar_range) for t in rows])
