"""Tests of himari_jax.data.synthetic: resampled markets keep the real bars' distribution, lose
their predictability, and pass every check a real frame passes."""

import io
import re

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from himari_jax.data import features, synthetic
from himari_jax.data import ohlcv as data

NUM_BARS = 12_000  # the last 12,000 BTC bars (2023-2024): long enough for tail quantiles


@pytest.fixture(scope='module')
def real():
  return data.load_dataset('btc_usdt_1h_2020_2024').iloc[-NUM_BARS:]


def _log_returns(df):
  return np.diff(np.log(df['close'].to_numpy()))


def _acf(x, lag):
  x = x - x.mean()
  return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


@pytest.mark.parametrize('method', synthetic.METHODS)
def test_return_distribution_is_kept(real, method):
  r0 = _log_returns(real)
  r = _log_returns(synthetic.make_market(real, seed=3, method=method))
  assert len(r) == len(r0)
  standard_error = r0.std() / np.sqrt(len(r))
  # The real series' drift is 2.2 standard errors here, so a resample keeps it within noise.
  assert abs(r.mean() - r0.mean()) < 4 * standard_error
  assert r.std() == pytest.approx(r0.std(), rel=0.08)
  levels = [5, 25, 75, 95]
  np.testing.assert_allclose(np.percentile(r, levels), np.percentile(r0, levels), rtol=0.12)
  np.testing.assert_allclose(np.percentile(r, [1, 99]), np.percentile(r0, [1, 99]), rtol=0.15)
  # Hourly crypto returns have fat tails (excess kurtosis ~10 here); resampling keeps them.
  assert 0.5 < scipy.stats.kurtosis(r) / scipy.stats.kurtosis(r0) < 2.0


def test_iid_destroys_autocorrelation_and_block_keeps_volatility_clustering(real):
  r0 = _log_returns(real)
  iid = _log_returns(synthetic.make_market(real, seed=5, method='iid'))
  block = _log_returns(synthetic.make_market(real, seed=5, method='block',
                                             mean_block_length=48))
  bound = 4 / np.sqrt(len(iid))  # 4 standard errors of an autocorrelation under independence
  lags = range(1, 6)
  real_clustering = np.mean([_acf(np.abs(r0), k) for k in lags])
  assert real_clustering > 0.1  # the real series does cluster: the test below means something
  assert all(abs(_acf(iid, k)) < bound for k in lags)
  assert all(abs(_acf(np.abs(iid), k)) < bound for k in lags)
  assert np.mean([_acf(np.abs(block), k) for k in lags]) > 0.6 * real_clustering


def test_remove_drift_centres_log_returns(real):
  r0 = _log_returns(real)
  runs = 20
  kept = [_log_returns(synthetic.make_market(real, seed=s)).mean() for s in range(runs)]
  removed = [_log_returns(synthetic.make_market(real, seed=s, remove_drift=True)).mean()
             for s in range(runs)]
  # Standard error of a mean over all runs' bars; the real drift is ~10 of them.
  standard_error = r0.std() / np.sqrt(runs * len(r0))
  assert abs(np.mean(kept) - r0.mean()) < 4 * standard_error
  assert abs(np.mean(removed)) < 4 * standard_error
  assert abs(r0.mean()) > 8 * standard_error


@pytest.mark.parametrize('method', synthetic.METHODS)
def test_same_seed_same_market_other_seed_other_market(real, method):
  a = synthetic.make_market(real, seed=(7, 0), method=method)
  b = synthetic.make_market(real, seed=(7, 0), method=method)
  c = synthetic.make_market(real, seed=(7, 1), method=method)
  pd.testing.assert_frame_equal(a, b)
  assert not np.allclose(a['close'].to_numpy(), c['close'].to_numpy())


@pytest.mark.parametrize('method', synthetic.METHODS)
def test_market_is_valid_ohlcv_for_every_stage(real, method):
  start = pd.Timestamp('2030-01-01 05:00')
  df = synthetic.make_market(real, seed=11, method=method, num_bars=3_000, start=start,
                             start_price=250.0, remove_drift=True)
  opn, high, low, close = (df[c].to_numpy() for c in data.PRICE_COLUMNS)
  assert (high >= np.maximum(opn, close)).all() and (low <= np.minimum(opn, close)).all()
  assert (low > 0).all() and (df['volume'] >= 0).all()
  assert df.index[0] == start.tz_localize('UTC')
  assert (np.diff(df.index.asi8) == pd.Timedelta(hours=1).value).all()
  assert df.attrs['gaps']['count'] == 0
  buffer = io.StringIO()
  df.to_csv(buffer)
  buffer.seek(0)
  loaded = data.load_ohlcv(buffer)
  pd.testing.assert_frame_equal(loaded, df, check_freq=False)
  state = features.compute_features(df)
  assert state.shape == (len(df), features.NUM_FEATURES) and np.isfinite(state).all()


def test_bar_shapes_skip_pairs_across_gaps_and_pool_frames(real):
  piece = real.iloc[:100]
  holed = piece.drop(piece.index[[10, 11, 50]])  # two gaps: bars 10-11 and 50 missing
  shapes = synthetic.bar_shapes(holed)
  assert len(shapes) == len(holed) - 1 - 2
  close = piece['close'].to_numpy()
  assert np.log(close[12] / close[9]) not in shapes.log_return  # the 3-hour move is left out
  both = synthetic.bar_shapes([piece, real.iloc[200:300]])
  assert len(both) == 99 + 99


def test_block_indices_run_in_blocks_of_the_mean_length():
  rng = np.random.default_rng(0)
  index = synthetic.resample_indices(rng, 1_000, 200_000, 'block', mean_block_length=20)
  breaks = np.count_nonzero(np.diff(index) % 1_000 != 1)
  # Blocks start with probability 1/20 per bar (a new start can land on the next bar too).
  assert 200_000 / (breaks + 1) == pytest.approx(20, rel=0.05)
  assert index.min() >= 0 and index.max() < 1_000


def test_bad_input_is_named(real):
  broken = real.iloc[:50].copy()
  broken.iloc[20, broken.columns.get_loc('high')] = 1.0
  with pytest.raises(data.DataError, match=re.escape(f'bar {broken.index[20]}, column high')):
    synthetic.make_market(broken, seed=0)
  with pytest.raises(ValueError, match='method'):
    synthetic.make_market(real, seed=0, method='shuffle')
  with pytest.raises(ValueError, match='mean_block_length'):
    synthetic.make_market(real, seed=0, method='block', mean_block_length=0.5)


@pytest.mark.parametrize('method, random_signs, carried', [
    ('block', False, True), ('block', None, False), ('iid', None, False)])
def test_a_planted_next_bar_peek_survives_only_unmirrored_blocks(real, method, random_signs,
                                                                 carried):
  # Volume that announces the next bar's direction: an edge the real series has and a
  # placebo must not. Blocks of consecutive real bars carry it unless bars are mirrored.
  close = real['close'].to_numpy()
  planted = real.copy()
  planted['volume'] = np.r_[close[1:] > close[:-1], False] + 1.0
  df = synthetic.make_market(planted, seed=2, method=method, random_signs=random_signs)
  peek = np.corrcoef(df['volume'].to_numpy()[:-1], _log_returns(df))[0, 1]
  if carried:
    assert peek > 0.4
  else:
    assert abs(peek) < 4 / np.sqrt(len(df))


def test_make_markets_one_per_real_frame_from_one_pool(real):
  train, test = real.iloc[:8_000], real.iloc[8_000:]
  markets = synthetic.make_markets([train, test], seed=4, method='block')
  assert [len(m) for m in markets] == [len(train), len(test)]
  assert [m.index[0] for m in markets] == [train.index[0], test.index[0]]
  assert markets[0].attrs['synthetic']['pool_bars'] == len(real) - 2
  alone = synthetic.make_market(test, seed=(4, 1), method='block', pool=[train, test])
  pd.testing.assert_frame_equal(markets[1], alone)


@pytest.mark.parametrize('year', ['2021', '2023', '2025'])
def test_era_market_keeps_its_drift_volatility_and_volatility_clustering(year):
  source = 'btc_usdt_1h_2025_2026' if year == '2025' else 'btc_usdt_1h_2020_2024'
  era = data.load_dataset(source).loc[f'{year}-01-01':f'{year}-12-31']
  markets = [synthetic.make_era_market(era, seed=s) for s in range(8)]
  real_r = _log_returns(era)
  fake = [_log_returns(m) for m in markets]
  # Every bar is one of the era's, mirrored about its mean: the era's volatility and, in
  # expectation, its drift (8 years of draws: the mean's error is std / sqrt(8 n)).
  assert abs(np.mean([r.std() for r in fake]) / real_r.std() - 1) < 0.05
  assert abs(np.mean(np.concatenate(fake)) - real_r.mean()) < 3 * real_r.std() / np.sqrt(
      8 * len(real_r))
  for lag in (24, 168):
    real_acf = _acf(np.abs(real_r), lag)
    fake_acf = np.mean([_acf(np.abs(r), lag) for r in fake])
    assert abs(fake_acf - real_acf) < 0.03, (lag, real_acf, fake_acf)
  # Directions stay unreadable: no autocorrelation of the returns themselves.
  assert abs(np.mean([_acf(r, 1) for r in fake])) < 0.02
  assert markets[0].attrs['synthetic']['period'] == synthetic.HOURS_PER_WEEK


def test_block_starts_keep_the_phase():
  rng = np.random.default_rng(0)
  index = synthetic.resample_indices(rng, 1000, 5000, 'block', mean_block_length=10, period=168)
  assert np.all(index % 168 == np.arange(5000) % 168)
  assert index.max() < 1000 // 168 * 168
  with pytest.raises(ValueError, match='period'):
    synthetic.resample_indices(rng, 100, 10, 'block', period=200)


def test_make_markets_by_era_draw_each_market_from_its_own_frame(real):
  first, second = real.iloc[:6000], real.iloc[6000:]
  markets = synthetic.make_markets([first, second], seed=3, method='era')
  assert [len(m) for m in markets] == [6000, len(second)]
  assert markets[1].attrs['synthetic']['pool_bars'] == len(second) - 1
  pd.testing.assert_frame_equal(markets[0], synthetic.make_era_market(first, seed=(3, 0)))
  with pytest.raises(ValueError, match='no pool'):
    synthetic.make_markets([first], seed=0, method='era', pool=second)
