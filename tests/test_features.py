"""Feature tests: no look-ahead on real data, hand-computed values, finiteness, normaliser."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from himari_jax.data import features as F
from himari_jax.data import ohlcv as data

col = {name: j for j, name in enumerate(F.FEATURE_NAMES)}


@pytest.fixture(scope='module')
def btc():
  return data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True)


@pytest.fixture(scope='module')
def small(btc):
  """300 real bars of early 2020 (includes a missing hour, filled flat)."""
  return btc.iloc[800:1100]


def test_names_and_warmup():
  assert len(F.FEATURE_NAMES) == 60 == len(set(F.FEATURE_NAMES))
  assert len(F.FEATURE_WARMUP) == 60
  assert F.WARMUP_BARS == 168
  assert F.FEATURE_NAMES[13] == 'rsi_14' and F.FEATURE_NAMES[44] == 'autocorr_168'
  assert F.FEATURE_NAMES[49:] == tuple(f'reserved_{i}' for i in range(11))


def test_shape_dtype_and_finite_on_bundled_btc(btc):
  x = F.compute_features(btc)
  assert x.shape == (len(btc), 60) and x.dtype == np.float32
  assert np.isfinite(x).all()
  assert (x[:, 49:] == 0).all()
  assert (np.abs(x[F.WARMUP_BARS:, :49]).max(axis=0) > 0).all()  # no column is dead


def test_finite_through_long_flat_zero_volume_runs():
  # ETH 2017-2019 has a 33-hour outage: filled, it is 33 flat zero-volume bars in a row, so
  # whole 24-bar windows have zero volume and zero variance.
  eth = data.builtin_dataset('eth_usdt_1h_2017_2019', fill_gaps=True)
  outage = eth.index.get_loc(pd.Timestamp('2018-02-08 01:00', tz='UTC'))
  x = F.compute_features(eth.iloc[outage - 300:outage + 100])
  assert np.isfinite(x).all()
  flat = x[300 + 32]  # last bar of the outage
  for name in ('volume_ratio_24', 'volume_zscore_24', 'ret_volume_corr_24', 'obv_flow_24',
               'range_mean_24', 'parkinson_24', 'garman_klass_24'):
    assert flat[col[name]] == 0, name


def test_warmup_rows_are_zero_and_the_table_is_tight(small):
  x = F.compute_features(small)
  for j in range(45):  # calendar and reserved columns can be 0 legitimately
    w = F.FEATURE_WARMUP[j]
    assert (x[:w, j] == 0).all(), F.FEATURE_NAMES[j]
    if w:  # EMAs start at bar 0, where close / EMA - 1 is 0 by construction
      assert x[w, j] != 0, F.FEATURE_NAMES[j]


def test_no_look_ahead_on_real_data(btc):
  """Row t computed from bars <= t only equals row t computed from the whole frame."""
  frame = btc.iloc[:2000]  # early 2020: filled exchange gaps and the March crash
  full = F.compute_features(frame)
  rng = np.random.default_rng(0)
  cuts = sorted({0, 1, 2, 13, 14, 15, 26, 27, 28, 166, 167, 168, 169, 170, 1999,
                 *rng.integers(F.WARMUP_BARS, 2000, size=30).tolist()})
  for t in cuts:
    row = F.compute_features(frame.iloc[:t + 1])[t]
    np.testing.assert_allclose(row, full[t], rtol=1e-6, atol=1e-7, err_msg=f'cut {t}')


def test_future_bars_do_not_change_the_past(small):
  before = F.compute_features(small)
  shocked = small.copy()
  shocked.iloc[200:, :4] *= 1.5
  shocked.iloc[200:, 4] = 0.0
  after = F.compute_features(shocked)
  np.testing.assert_array_equal(after[:200], before[:200])
  assert not np.allclose(after[200], before[200])


# Independent per-bar computations (loops and numpy on explicit windows) for hand checks.


def _wilder_loop(x, start, n=14):
  out = np.full(len(x), np.nan)
  avg = np.mean(x[start:start + n])
  out[start + n - 1] = avg
  for t in range(start + n, len(x)):
    avg = (avg * (n - 1) + x[t]) / n
    out[t] = avg
  return out


def _ema_loop(x, k):
  alpha = 2 / (k + 1)
  out = np.empty(len(x))
  out[0] = x[0]
  for t in range(1, len(x)):
    out[t] = alpha * x[t] + (1 - alpha) * out[t - 1]
  return out


def _ohlcv(df):
  return (df[k].to_numpy() for k in ('open', 'high', 'low', 'close', 'volume'))


def _check(x, name, t, expected):
  assert x[t, col[name]] == pytest.approx(expected, rel=1e-4, abs=1e-6), (name, t)


def test_hand_checked_price_features(small):
  x = F.compute_features(small)
  _, h, low, c, _ = _ohlcv(small)
  for t in (168, 200, 299):
    _check(x, 'ret_1', t, c[t] / c[t - 1] - 1)
    _check(x, 'ret_168', t, c[t] / c[t - 168] - 1)
    _check(x, 'close_sma_24', t, c[t] / (sum(c[t - 23:t + 1]) / 24) - 1)
    r = [c[s] / c[s - 1] - 1 for s in range(t - 23, t + 1)]
    _check(x, 'vol_24', t, float(pd.Series(r).std(ddof=0)))
    _check(x, 'momentum_72', t, (c[t] - c[t - 72]) / c[t])
    _check(x, 'dist_high_168', t, c[t] / max(h[t - 167:t + 1]) - 1)
    _check(x, 'dist_low_24', t, c[t] / min(low[t - 23:t + 1]) - 1)
    window = c[t - 19:t + 1]
    mid, sd = window.mean(), window.std()
    _check(x, 'bollinger_pctb', t, (c[t] - (mid - 2 * sd)) / (4 * sd))
    _check(x, 'bollinger_width', t, 4 * sd / mid)
    hh, ll = max(h[t - 13:t + 1]), min(low[t - 13:t + 1])
    _check(x, 'stoch_k_14', t, 2 * (c[t] - ll) / (hh - ll) - 1)
    ks = [2 * (c[s] - min(low[s - 13:s + 1])) / (max(h[s - 13:s + 1]) - min(low[s - 13:s + 1]))
          - 1 for s in (t - 2, t - 1, t)]
    _check(x, 'stoch_d_3', t, sum(ks) / 3)
    rr = np.array([c[s] / c[s - 1] - 1 for s in range(t - 167, t + 1)])
    dev = rr - rr.mean()
    _check(x, 'skew_168', t, np.mean(dev ** 3) / np.mean(dev ** 2) ** 1.5)
    _check(x, 'autocorr_168', t, np.corrcoef(rr[:-1], rr[1:])[0, 1])


def test_hand_checked_wilder_and_ema_features(small):
  x = F.compute_features(small)
  _, h, low, c, _ = _ohlcv(small)
  n = len(c)
  change = np.r_[np.nan, np.diff(c)]
  gain = _wilder_loop(np.maximum(change, 0), 1)
  loss = _wilder_loop(np.maximum(-change, 0), 1)
  tr = np.r_[np.nan, [max(h[t] - low[t], abs(h[t] - c[t - 1]), abs(low[t] - c[t - 1]))
                      for t in range(1, n)]]
  atr = _wilder_loop(tr, 1)
  plus_dm, minus_dm = np.zeros(n), np.zeros(n)
  for t in range(1, n):
    up, down = h[t] - h[t - 1], low[t - 1] - low[t]
    plus_dm[t] = up if up > down and up > 0 else 0
    minus_dm[t] = down if down > up and down > 0 else 0
  plus_di = 100 * _wilder_loop(plus_dm, 1) / atr
  minus_di = 100 * _wilder_loop(minus_dm, 1) / atr
  dx = 100 * np.abs(plus_di - minus_di) / (plus_di + minus_di)
  adx = _wilder_loop(dx, 14)
  ema12, ema26 = _ema_loop(c, 12), _ema_loop(c, 26)
  macd = (ema12 - ema26) / c
  signal = _ema_loop(macd, 9)
  for t in (14, 27, 100, 299):
    rsi = 100 - 100 / (1 + gain[t] / loss[t])
    _check(x, 'rsi_14', t, (rsi - 50) / 50)
    _check(x, 'atr_14', t, atr[t] / c[t])
    _check(x, 'close_ema_26', t, c[t] / ema26[t] - 1)
    _check(x, 'macd', t, macd[t])
    _check(x, 'macd_signal', t, signal[t])
    _check(x, 'macd_hist', t, macd[t] - signal[t])
  for t in (27, 100, 299):
    _check(x, 'adx_14', t, adx[t] / 100)


def test_hand_checked_volume_range_and_calendar_features(small):
  x = F.compute_features(small)
  o, h, low, c, v = _ohlcv(small)
  for t in (170, 299):
    vw = v[t - 23:t + 1]
    _check(x, 'volume_ratio_24', t, v[t] / vw.mean() - 1)
    _check(x, 'volume_zscore_24', t, (v[t] - vw.mean()) / vw.std())
    _check(x, 'volume_trend_24_168', t, vw.mean() / v[t - 167:t + 1].mean() - 1)
    r = [c[s] / c[s - 1] - 1 for s in range(t - 23, t + 1)]
    dv = [v[s] / v[s - 1] - 1 if v[s - 1] else 0 for s in range(t - 23, t + 1)]
    _check(x, 'ret_volume_corr_24', t, np.corrcoef(r, dv)[0, 1])
    obv = 0.0
    for s in range(t - 23, t + 1):
      obv += math.copysign(v[s], c[s] - c[s - 1]) if c[s] != c[s - 1] else 0.0
    _check(x, 'obv_flow_24', t, obv / vw.sum())
    _check(x, 'range', t, (h[t] - low[t]) / c[t])
    _check(x, 'range_mean_24', t, np.mean((h[t - 23:t + 1] - low[t - 23:t + 1])
                                          / c[t - 23:t + 1]))
    tp = (h[t - 19:t + 1] + low[t - 19:t + 1] + c[t - 19:t + 1]) / 3
    mad = np.mean(np.abs(tp - tp.mean()))
    _check(x, 'cci_20', t, (tp[-1] - tp.mean()) / (0.015 * mad) / 100)
    hl = np.log(h[t - 23:t + 1] / low[t - 23:t + 1])
    co = np.log(c[t - 23:t + 1] / o[t - 23:t + 1])
    _check(x, 'parkinson_24', t, math.sqrt(np.mean(hl ** 2) / (4 * math.log(2))))
    _check(x, 'garman_klass_24', t,
           math.sqrt(np.mean(0.5 * hl ** 2 - (2 * math.log(2) - 1) * co ** 2)))
    vol24 = np.std([c[s] / c[s - 1] - 1 for s in range(t - 23, t + 1)])
    vol168 = np.std([c[s] / c[s - 1] - 1 for s in range(t - 167, t + 1)])
    _check(x, 'vol_ratio_24_168', t, vol24 / vol168 - 1)
    stamp = small.index[t]
    _check(x, 'hour_sin', t, math.sin(2 * math.pi * stamp.hour / 24))
    _check(x, 'dow_cos', t, math.cos(2 * math.pi * stamp.day_of_week / 7))


def test_normalizer_fits_on_masked_rows_and_clips():
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.0, size=(500, 60)).astype(np.float32)
  x[:, 49:] = 0.0  # reserved columns
  x[0, 0] = 1e6  # an outlier outside the mask
  mask = np.arange(500) >= 10
  norm = F.Normalizer.fit(x, mask)
  np.testing.assert_allclose(norm.mean[:49], x[mask, :49].mean(0), rtol=1e-5)
  np.testing.assert_allclose(norm.std[:49], x[mask, :49].std(0), rtol=1e-5)
  y = norm(x)
  assert y.dtype == np.float32 and np.isfinite(y).all()
  assert (y[:, 49:] == 0).all()  # constant columns give 0, not NaN
  assert y[0, 0] == 10.0  # clipped
  assert abs(y[mask, :49].mean()) < 1e-3
  np.testing.assert_allclose(np.asarray(norm.apply(jnp.asarray(x))), y, rtol=1e-5, atol=1e-5)


def test_normalizer_round_trips_through_json():
  rng = np.random.default_rng(1)
  norm = F.Normalizer.fit(rng.normal(size=(50, 60)))
  restored = F.Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
  np.testing.assert_array_equal(restored.mean, norm.mean)
  np.testing.assert_array_equal(restored.std, norm.std)
  with pytest.raises(ValueError, match='shape'):
    F.Normalizer.from_dict({'mean': [0.0] * 59, 'std': [1.0] * 59})
  with pytest.raises(ValueError, match='empty'):
    F.Normalizer.fit(np.zeros((5, 60)), np.zeros(5, bool))


# Feature sets: the seed's own input ('seed_exact'), its causal twin, guards and the leak audit.

from seed_reference import seed_matrix  # noqa: E402 - the independent per-bar ground truth


@pytest.fixture(scope='module')
def btc_slice(btc):
  """2,000 real bars of 2020 (filled zero-volume hours included): both series ends matter, since
  the seed's centred means reach past them."""
  return btc.iloc[1000:3000]


@pytest.fixture(scope='module')
def eth_outage():
  """ETH around its 33-hour outage: flat zero-volume windows (NaN correlations, zero volume)."""
  eth = data.builtin_dataset('eth_usdt_1h_2017_2019', fill_gaps=True)
  outage = eth.index.get_loc(pd.Timestamp('2018-02-08 01:00', tz='UTC'))
  return eth.iloc[outage - 200:outage + 100]


def test_feature_set_table(small):
  assert list(F.FEATURE_SETS) == ['himari', 'seed_exact', 'seed_causal', 'himari_market']
  assert F.DEFAULT_FEATURE_SET == 'himari'
  for name, spec in F.FEATURE_SETS.items():
    assert spec.name == name and len(spec.columns) == F.NUM_FEATURES == len(set(spec.columns))
  assert F.FEATURE_SETS['himari'].columns == F.FEATURE_NAMES
  assert F.SEED_FEATURE_NAMES[21] == 'momentum_72' and F.SEED_FEATURE_NAMES[22] == 'padding_22'
  assert [F.needs_normalization(n) for n in F.FEATURE_SETS] == [True, False, False, True]
  assert [F.looks_ahead(n) for n in F.FEATURE_SETS] == [False, True, False, False]
  assert set(F.SEED_LOOKAHEAD_BARS) <= set(F.SEED_FEATURE_NAMES[:F.SEED_NUM_COMPUTED])
  with pytest.raises(F.FeatureSetError, match="unknown feature set 'seed'.*himari, seed_exact"):
    F.compute_features(small, 'seed')


def test_default_is_the_himari_state(small):
  np.testing.assert_array_equal(F.compute_features(small), F.compute_features(small, 'himari'))


@pytest.mark.parametrize('causal', [False, True])
def test_seed_sets_equal_the_per_bar_formulas(btc_slice, eth_outage, causal):
  name = 'seed_causal' if causal else 'seed_exact'
  for frame in (btc_slice, eth_outage):
    expected = seed_matrix(frame, range(len(frame)), causal=causal)
    got = F.seed_features(frame, causal=causal)
    assert got.dtype == np.float64 and got.shape == (len(frame), 22)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    padded = F.compute_features(frame, name)
    assert padded.dtype == np.float32 and padded.shape == (len(frame), 60)
    np.testing.assert_array_equal(padded[:, :22], got.astype(np.float32))
    assert (padded[:, 22:] == 0).all()
  # Not normalised: the seed's volume ratio and std/volume run far past the +-10 clip.
  assert np.abs(F.seed_features(btc_slice, causal)[:, 14:16]).max() > 10


def test_seed_sets_differ_exactly_in_the_centred_mean_columns(btc_slice):
  exact = F.seed_features(btc_slice, causal=False)
  causal = F.seed_features(btc_slice, causal=True)
  differs = {F.SEED_FEATURE_NAMES[j] for j in range(22) if not np.array_equal(exact[:, j],
                                                                            causal[:, j])}
  assert differs == set(F.SEED_LOOKAHEAD_BARS)


def _cuts(n, count, seed):
  return sorted(np.random.default_rng(seed).integers(F.WARMUP_BARS, n - 1, size=count).tolist())


def test_leak_audit_documents_the_seed_leaks(btc_slice):
  """The closing table of issue 18: which seed_exact columns see the future, by how many bars."""
  cuts = _cuts(len(btc_slice), 8, seed=0)
  audit = F.leak_audit(btc_slice, 'seed_exact', cuts)
  print('\nseed_exact leak audit (bars ahead; prefix recomputation at cuts', cuts, ')')
  print(audit.iloc[:F.SEED_NUM_COMPUTED].to_string())
  leaking = audit[audit.leak_bars > 0]
  assert dict(zip(leaking.name, leaking.leak_bars, strict=True)) == F.SEED_LOOKAHEAD_BARS
  assert len(leaking) == 7
  assert dict(zip(leaking.name, leaking.leak_bars, strict=True)) == {
      'close_ma_12': 5, 'close_ma_24': 11, 'close_ma_72': 35, 'close_ma_168': 83, 'rsi_14': 6,
      'volume_ratio_24': 11, 'range_ma_24': 11}  # (k - 1) // 2 of np.convolve(..., 'same')
  assert audit.leak_bars.max() == F.FEATURE_SETS['seed_exact'].lookahead_bars


@pytest.mark.parametrize('name', ['seed_causal', 'himari'])
def test_causal_sets_leak_nothing(btc_slice, name):
  audit = F.leak_audit(btc_slice, name, [1, 2, 14, 24, 169, *_cuts(len(btc_slice), 8, seed=1)])
  assert (audit.leak_bars == 0).all(), audit[audit.leak_bars > 0]
  assert audit.max_abs_change.max() < 1e-5


def test_leak_audit_rejects_bad_cuts(small):
  with pytest.raises(ValueError, match='cut 300 is outside 1 .. 299'):
    F.leak_audit(small, 'himari', [10, 300])


def test_scoring_and_training_guards():
  F.check_feature_set('seed_causal', 'seed_causal')
  with pytest.raises(F.FeatureSetError,
                     match="trained on feature set 'seed_causal' but would be scored with "
                           "'himari'.*config.data.feature_set=seed_causal"):
    F.check_feature_set('seed_causal', 'himari')
  with pytest.raises(F.FeatureSetError, match='unknown feature set'):
    F.check_feature_set('himari', 'raw')
  F.check_training_feature_set('seed_causal')
  F.check_training_feature_set('seed_exact', allow_lookahead=True)
  with pytest.raises(F.FeatureSetError, match='83 bars into the future.*allow_lookahead=True'):
    F.check_training_feature_set('seed_exact')
  assert F.lookahead_warning('himari') is None and F.lookahead_warning('seed_causal') is None
  warning = F.lookahead_warning('seed_exact')
  assert 'inputs see up to 83 bars into the future' in warning and 'not evidence' in warning


def test_feature_set_of_a_config(tiny_config):
  assert F.feature_set_of(tiny_config) == 'himari'  # runs from before feature sets
  tiny_config.data.feature_set = 'seed_causal'
  assert F.feature_set_of(tiny_config) == 'seed_causal'
  tiny_config.data.feature_set = 'seed'
  with pytest.raises(F.FeatureSetError, match="'seed'"):
    F.feature_set_of(tiny_config)


def test_identity_normalizer_for_seed_sets(btc_slice):
  raw = F.compute_features(btc_slice, 'seed_exact')
  identity = F.fit_normalizer('seed_exact', raw, np.arange(len(raw)) >= F.WARMUP_BARS)
  assert identity.is_identity
  np.testing.assert_array_equal(identity(raw), raw)  # unclipped, however large
  restored = F.Normalizer.from_dict(json.loads(json.dumps(identity.to_dict())))
  assert restored.is_identity and restored.clip is None
  fitted = F.fit_normalizer('himari', F.compute_features(btc_slice))
  assert not fitted.is_identity and fitted.clip == F.CLIP
  legacy = {'mean': [0.0] * 60, 'std': [1.0] * 60}  # meta written before `clip` existed
  assert F.Normalizer.from_dict(legacy).clip == F.CLIP
  assert F.Normalizer.from_dict(legacy)(np.full(60, 50.0)).max() == F.CLIP
