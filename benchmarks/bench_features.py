r"""Benchmark: vectorised `compute_features` against a per-bar loop of the same 60 columns.

The loop computes each bar's row from that bar's trailing windows (recursive filters carried
as state), the way a straightforward implementation would. It is slow, so it runs on the
first `--loop_bars` bars and its time is extrapolated linearly to the whole series (its cost
per bar is flat once the longest window, 168 bars, is full). Both results are compared on
the bars the loop covered.

  python benchmarks/bench_features.py [--dataset=btc_usdt_1h_2020_2024] [--loop_bars=3000]
"""

import math
import time

import numpy as np
from absl import app, flags

from himari_jax.data import features
from himari_jax.data import ohlcv as data

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset', 'btc_usdt_1h_2020_2024', 'Builtin dataset name or CSV path.')
flags.DEFINE_integer('loop_bars', 3000, 'Bars the per-bar loop computes (then extrapolated).')
flags.DEFINE_integer('repeats', 5, 'Timed runs of the vectorised version (best is reported).')


def _ratio(num, den, empty=0.0):
  return num / den if den != 0 else empty


def _corr(x, y):
  dx, dy = x - x.mean(), y - y.mean()
  den = math.sqrt((dx * dx).sum() * (dy * dy).sum())
  return min(1.0, max(-1.0, _ratio((dx * dy).sum(), den)))


class _Wilder:
  """Wilder smoothing fed one value per bar: the mean of the first 14, then recursive."""

  def __init__(self, n=14):
    self.n, self.seen, self.value = n, [], None

  def update(self, x):
    if self.value is None:
      self.seen.append(x)
      if len(self.seen) == self.n:
        self.value = sum(self.seen) / self.n
    else:
      self.value += (x - self.value) / self.n
    return self.value


class _Ema:

  def __init__(self, k):
    self.alpha, self.value = 2.0 / (k + 1), None

  def update(self, x):
    self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
    return self.value


def loop_features(df):
  """Per-bar reference of `features.compute_features`: (N, 60) float32."""
  o, h, lo, c, v = (df[k].to_numpy(np.float64) for k in ('open', 'high', 'low', 'close',
                                                        'volume'))
  n = len(c)
  out = np.zeros((n, 60))
  gain, loss, atr, pdm, mdm, adx = (_Wilder() for _ in range(6))
  ema12, ema26, signal = _Ema(12), _Ema(26), _Ema(9)
  stoch = np.zeros(n)
  hours, days = df.index.hour, df.index.day_of_week
  for t in range(n):
    row = out[t]
    rets = lambda k, t=t: c[t - k + 1:t + 1] / c[t - k:t] - 1  # last k returns
    for j, k in enumerate((1, 6, 24, 72, 168)):
      if t >= k:
        row[j] = c[t] / c[t - k] - 1
    for j, k in enumerate((12, 24, 72, 168)):
      if t >= k - 1:
        row[5 + j] = c[t] / c[t - k + 1:t + 1].mean() - 1
      if t >= k:
        row[9 + j] = rets(k).std()
    if t >= 1:
      change = c[t] - c[t - 1]
      g, l_ = gain.update(max(change, 0.0)), loss.update(max(-change, 0.0))
      if g is not None:
        row[13] = _ratio(g - l_, g + l_)
      tr = max(h[t] - lo[t], abs(h[t] - c[t - 1]), abs(lo[t] - c[t - 1]))
      a = atr.update(tr)
      up, down = h[t] - h[t - 1], lo[t - 1] - lo[t]
      p = pdm.update(up if up > down and up > 0 else 0.0)
      m = mdm.update(down if down > up and down > 0 else 0.0)
      if a is not None:
        row[30] = a / c[t]
        pdi, mdi = _ratio(p, a), _ratio(m, a)
        d = adx.update(_ratio(abs(pdi - mdi), pdi + mdi))
        if d is not None:
          row[33] = d
    if t >= 23:
      vw = v[t - 23:t + 1]
      row[14] = _ratio(v[t], vw.mean()) - 1 if vw.mean() else 0.0
      row[15] = _ratio(v[t] - vw.mean(), vw.std())
      hl = (h[t - 23:t + 1] - lo[t - 23:t + 1]) / c[t - 23:t + 1]
      row[19] = hl.mean()
      log_hl = np.log(h[t - 23:t + 1] / lo[t - 23:t + 1])
      log_co = np.log(c[t - 23:t + 1] / o[t - 23:t + 1])
      row[41] = math.sqrt((log_hl ** 2).mean() / (4 * math.log(2)))
      gk = (0.5 * log_hl ** 2 - (2 * math.log(2) - 1) * log_co ** 2).mean()
      row[42] = math.sqrt(max(gk, 0.0))
      row[36] = c[t] / h[t - 23:t + 1].max() - 1
      row[38] = c[t] / lo[t - 23:t + 1].min() - 1
    if t >= 167:
      mean168 = v[t - 167:t + 1].mean()
      row[16] = _ratio(v[t - 23:t + 1].mean(), mean168) - 1 if mean168 else 0.0
      row[37] = c[t] / h[t - 167:t + 1].max() - 1
      row[39] = c[t] / lo[t - 167:t + 1].min() - 1
    if t >= 24:
      dv = np.array([_ratio(v[s], v[s - 1]) - 1 if v[s - 1] else 0.0
                     for s in range(t - 23, t + 1)])
      row[17] = _corr(rets(24), dv)
      signs = np.sign(c[t - 23:t + 1] - c[t - 24:t])
      row[35] = _ratio((signs * v[t - 23:t + 1]).sum(), v[t - 23:t + 1].sum())
    row[18] = (h[t] - lo[t]) / c[t]
    for j, k in enumerate((12, 24, 72)):
      if t >= k:
        row[20 + j] = (c[t] - c[t - k]) / c[t]
    e12, e26 = ema12.update(c[t]), ema26.update(c[t])
    macd = (e12 - e26) / c[t]
    sig = signal.update(macd)
    row[23:28] = c[t] / e12 - 1, c[t] / e26 - 1, macd, sig, macd - sig
    if t >= 19:
      window = c[t - 19:t + 1]
      mid, sd = window.mean(), window.std()
      row[28] = _ratio(c[t] - (mid - 2 * sd), 4 * sd, empty=0.5)
      row[29] = 4 * sd / mid
      tp = (h[t - 19:t + 1] + lo[t - 19:t + 1] + c[t - 19:t + 1]) / 3
      row[34] = _ratio(tp[-1] - tp.mean(), 0.015 * np.abs(tp - tp.mean()).mean()) / 100
    if t >= 13:
      hh, ll = h[t - 13:t + 1].max(), lo[t - 13:t + 1].min()
      stoch[t] = 2 * _ratio(c[t] - ll, hh - ll, empty=0.5) - 1
      row[31] = stoch[t]
      if t >= 15:
        row[32] = stoch[t - 2:t + 1].mean()
    if t >= 168:
      r = rets(168)
      dev = r - r.mean()
      row[40] = _ratio((dev ** 3).mean(), (dev ** 2).mean() ** 1.5)
      row[43] = _ratio(row[10], row[12]) - 1 if row[12] else 0.0
      row[44] = _corr(r[:-1], r[1:])
    row[45:49] = (math.sin(2 * math.pi * hours[t] / 24), math.cos(2 * math.pi * hours[t] / 24),
                  math.sin(2 * math.pi * days[t] / 7), math.cos(2 * math.pi * days[t] / 7))
  return out.astype(np.float32)


def main(argv):
  del argv
  df = data.load_dataset(FLAGS.dataset, fill_gaps=True)
  n = len(df)
  features.compute_features(df.iloc[:500])  # first call pays imports and allocator warm-up
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    fast = features.compute_features(df)
    times.append(time.perf_counter() - start)
  vectorised = min(times)

  m = min(FLAGS.loop_bars, n)
  start = time.perf_counter()
  slow = loop_features(df.iloc[:m])
  loop_time = time.perf_counter() - start
  # Linear in bars; bars inside the 168-bar warm-up are cheaper, so this slightly understates.
  per_bar = loop_time / m
  loop_full = per_bar * n

  diff = np.abs(slow - fast[:m])
  scale = np.maximum(np.abs(fast[:m]), 1.0)
  print(f'dataset: {FLAGS.dataset}, {n:,} bars x 60 features')
  print(f'vectorised compute_features: {vectorised:.3f} s (best of {FLAGS.repeats}; '
        f'median {np.median(times):.3f} s)')
  extrapolated = f' -> {loop_full:.1f} s extrapolated to {n:,} bars' if m < n else ''
  print(f'per-bar loop: {loop_time:.2f} s for {m:,} bars{extrapolated} '
        f'({per_bar * 1e3:.2f} ms/bar)')
  print(f'speed-up: {loop_full / vectorised:,.0f}x')
  worst = int(np.argmax((diff / scale).max(axis=0)))
  print(f'agreement on {m:,} bars: max |diff| / max(|x|, 1) = {(diff / scale).max():.2e} '
        f'(worst column {worst}: {features.FEATURE_NAMES[worst]})')


if __name__ == '__main__':
  app.run(main)
