"""input_pipeline: in-memory frames, one normaliser per asset fitted on its own training rows."""

import numpy as np
import pytest

from himari_jax import config as config_lib
from himari_jax.data import features, input_pipeline
from himari_jax.data import ohlcv as data


def test_asset_names_group_eras_of_one_coin():
  assert input_pipeline.asset_name('btc_usdt_1h_2017_2019') == 'btc_usdt'
  assert input_pipeline.asset_name('btc_usdt_1h_2020_2024') == 'btc_usdt'
  assert input_pipeline.asset_name('data/bnb_usdt_1h_binance_2020_2024.csv') == 'bnb_usdt'
  assert input_pipeline.asset_name('ETH-USDT-1h-2024.csv.gz') == 'eth_usdt'
  assert input_pipeline.asset_name('synthetic') == 'synthetic'


def test_each_asset_is_normalised_with_its_own_training_rows():
  config = config_lib.load_config('flag_trader:tiny')
  config.data.max_bars = 1200
  frames = {name: data.builtin_dataset(name, fill_gaps=True)
            for name in ('btc_usdt_1h_2020_2024', 'eth_usdt_1h_2020_2024')}
  prepared = input_pipeline.prepare_data(config, frames)
  assert list(prepared.normalizers) == ['btc_usdt', 'eth_usdt']
  btc, eth = prepared.summary['files']
  assert (btc['offset'], eth['offset']) == (0, 1200)
  # The bars trained and validated on, recorded for the in-sample guard of backtests.
  index = frames['btc_usdt_1h_2020_2024'].index[-1200:]
  train_stop = btc['bars'] - btc['val_bars'] - prepared.summary['embargo']
  assert (btc['train_first'], btc['train_last']) == (str(index[0]), str(index[train_stop - 1]))
  assert (btc['val_first'], btc['val_last']) == (str(index[-btc['val_bars']]), str(index[-1]))
  np.testing.assert_array_equal(prepared.asset_ids, np.repeat([0, 1], 1200))
  for info, normalizer in zip((btc, eth), prepared.normalizers.values(), strict=True):
    raw = features.compute_features(frames[info['name']].iloc[-1200:])
    train_stop = info['bars'] - info['val_bars'] - prepared.summary['embargo']
    expected = features.Normalizer.fit(raw[features.WARMUP_BARS:train_stop])
    np.testing.assert_allclose(normalizer.mean, expected.mean, rtol=1e-5, atol=1e-6)
    rows = slice(info['offset'], info['offset'] + info['bars'])
    np.testing.assert_allclose(prepared.features[rows], expected.apply(raw), atol=1e-5)
  # BTC's price level is far from ETH's: a pooled normaliser would differ from both.
  assert not np.allclose(prepared.normalizers['btc_usdt'].std,
                         prepared.normalizers['eth_usdt'].std)
  assert prepared.normalizer is prepared.normalizers['btc_usdt']


def test_frames_of_one_asset_share_a_normaliser_and_short_frames_fail():
  config = config_lib.load_config('flag_trader:tiny')
  config.data.max_bars = None
  df = data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True).iloc[-2400:]
  prepared = input_pipeline.prepare_data(config, {'btc_a_1h': df.iloc[:1200],
                                                  'btc_b_1h': df.iloc[1200:]})
  assert list(prepared.normalizers) == ['btc_a', 'btc_b']
  shared = input_pipeline.prepare_data(config, {'btc_1h_a': df.iloc[:1200],
                                                'btc_1h_b': df.iloc[1200:]})
  assert list(shared.normalizers) == ['btc']
  with pytest.raises(config_lib.ConfigError, match='short: 0 training'):
    input_pipeline.prepare_data(config, {'short': df.iloc[:120]})


def test_seed_feature_sets_are_fed_raw_with_an_identity_normaliser():
  config = config_lib.load_config('flag_trader:tiny')
  config.data.max_bars = 1200
  config.data.feature_set = 'seed_causal'
  frame = data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True)
  prepared = input_pipeline.prepare_data(config, {'btc_usdt_1h_2020_2024': frame})
  assert prepared.feature_set == prepared.summary['feature_set'] == 'seed_causal'
  assert prepared.normalizer.is_identity
  raw = features.compute_features(frame.iloc[-1200:], 'seed_causal')
  np.testing.assert_array_equal(prepared.features, raw.astype(np.float32))
  config.data.feature_set = 'himari'
  himari = input_pipeline.prepare_data(config, {'btc_usdt_1h_2020_2024': frame})
  assert himari.feature_set == 'himari' and not himari.normalizer.is_identity


def test_forward_returns_and_trade_mask_are_per_file():
  config = config_lib.load_config('flag_trader:tiny')
  config.data.max_bars = 600
  names = ('btc_usdt_1h_2020_2024', 'eth_usdt_1h_2020_2024')
  frames = {name: data.builtin_dataset(name, fill_gaps=True) for name in names}
  prepared = input_pipeline.prepare_data(config, frames)
  for i, name in enumerate(names):
    close = frames[name]['close'].to_numpy()[-600:]
    got = prepared.forward_returns[600 * i:600 * (i + 1)]
    np.testing.assert_allclose(got[:-1], close[1:] / close[:-1] - 1, rtol=1e-6)
    assert np.isnan(got[-1])  # a file's last bar does not earn the next file's first return
    mask = prepared.trade_mask[600 * i:600 * (i + 1)]
    assert not mask[:features.WARMUP_BARS].any() and not mask[-1]
    assert mask[features.WARMUP_BARS:-1].all()
  ends = prepared.train_ends[:4]
  batch = input_pipeline.gather_batch(prepared, ends, 8, trading=True)
  assert sorted(batch) == ['forward_return', 'inputs', 'mask']
  np.testing.assert_array_equal(batch['forward_return'][:, -1], prepared.forward_returns[ends])
  assert batch['mask'].dtype == bool and batch['mask'].all()
