"""Pooled training on a universe: `universe:PATH` data, one calendar split, per-coin
normalisers, balanced sampling, causality across coins, and a tiny pooled run that loads."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from himari_jax import config as config_lib
from himari_jax.data import input_pipeline, ohlcv
from himari_jax.data import universe as universe_lib
from himari_jax.inference import predict
from himari_jax.model import checkpoint
from himari_jax.training import train

UNIVERSE = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'universe'
COINS = ('btc', 'eth', 'xtz')
START, END = '2021-09-01', '2021-11-15 23:00'


def _write_universe(folder: pathlib.Path, *, perturb_after: pd.Timestamp | None = None,
                    coin: str = 'eth') -> pathlib.Path:
  """Three real coins cut to ~1800 bars as CSVs; `perturb_after` scales `coin`'s prices by
  1.05 and doubles its volume on every bar after that time."""
  folder.mkdir(parents=True, exist_ok=True)
  for name in COINS:
    source = next(UNIVERSE.glob(f'{name}_usdt_1h_*.csv.gz'))
    df = ohlcv.load_ohlcv(source).loc[START:END].copy()
    if perturb_after is not None and name == coin:
      later = df.index > perturb_after
      df.loc[later, ['open', 'high', 'low', 'close']] *= 1.05
      df.loc[later, 'volume'] *= 2.0
    df.to_csv(folder / source.name.removesuffix('.gz'), index_label='timestamp')
  return folder


def _config(folder: pathlib.Path, feature_set: str = 'himari_market'):
  config = config_lib.load_config('flag_trader:tiny')
  config.data.train = f'universe:{folder}'
  config.data.feature_set = feature_set
  config.train.update(num_epochs=1, steps_per_epoch=6, checkpoint_every_steps=0)
  return config


def test_universe_spec_is_parsed_and_refused_with_the_fix():
  assert input_pipeline.parse_universe('universe:data/universe@btc, ETH') == (
      'data/universe', ['BTC', 'ETH'])
  assert input_pipeline.parse_universe('universe:data/*.csv') == ('data/*.csv', None)
  with pytest.raises(config_lib.ConfigError, match='names no folder'):
    input_pipeline.parse_universe('universe:@BTC')
  config = config_lib.load_config('flag_trader:tiny')
  assert input_pipeline.split_of(config) == 'rows'
  assert input_pipeline.sampling_of(config) == 'windows'
  config.data.train = 'universe:data/universe'
  assert input_pipeline.split_of(config) == 'time'
  assert input_pipeline.sampling_of(config) == 'assets'
  config.train.sampling = 'coins'
  with pytest.raises(config_lib.ConfigError, match='config.train.sampling'):
    input_pipeline.sampling_of(config)


def test_balanced_order_draws_every_asset_equally_and_is_reproducible():
  window_assets = np.repeat([0, 1, 2], [500, 40, 7])
  order = input_pipeline.balanced_epoch_order(3, 1, window_assets, 301)
  counts = np.bincount(window_assets[order], minlength=3)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 301
  # The small asset's 7 windows are all used before any repeats (one permutation per pass).
  small = order[window_assets[order] == 2]
  assert len(set(small[:7].tolist())) == 7
  np.testing.assert_array_equal(order,
                                input_pipeline.balanced_epoch_order(3, 1, window_assets, 301))
  assert not np.array_equal(order, input_pipeline.balanced_epoch_order(3, 2, window_assets, 301))


def test_pooled_data_has_one_asset_per_coin_and_one_calendar_split(tmp_path):
  folder = _write_universe(tmp_path / 'u')
  prepared = input_pipeline.prepare_data(_config(folder))
  assert list(prepared.normalizers) == ['btc_usdt', 'eth_usdt', 'xtz_usdt']
  files = prepared.summary['files']
  assert prepared.summary['split'] == 'time'
  val_start = pd.Timestamp(prepared.summary['val_start'])
  for f in files:  # every coin's training rows end `embargo` bars before the one cut
    own = ohlcv.load_ohlcv(f['name']).index
    assert f['train_bars'] == int((own < val_start).sum()) - prepared.summary['embargo']
  # Balanced batches: each coin fills a third of every epoch.
  window_assets = prepared.asset_ids[prepared.train_ends]
  batches = input_pipeline.train_batches(
      prepared, seed=0, batch_size=9, context_length=8, steps_per_epoch=10, start_step=0,
      total_steps=10, sampling='assets')
  firsts = [b['inputs'].shape for _, _, b in batches]
  assert firsts == [(9, 8, 60)] * 10
  order = input_pipeline.balanced_epoch_order(0, 0, window_assets, 90)
  assert np.bincount(window_assets[order]).tolist() == [30, 30, 30]


def _rows_until(frame_index: pd.DatetimeIndex, t: pd.Timestamp) -> np.ndarray:
  return np.flatnonzero(frame_index <= t)


def test_perturbing_one_coin_after_t_changes_nothing_before_t_on_any_coin(tmp_path):
  """Features (own and market context) at bars <= t of every coin, and labels whose horizon
  ends by t, do not see one coin's bars after t, inside the training rows."""
  t = pd.Timestamp('2021-10-10 12:00', tz='UTC')
  base = _config(_write_universe(tmp_path / 'a'))
  moved = _config(_write_universe(tmp_path / 'b', perturb_after=t))
  horizon = base.labels.horizon
  panels = [universe_lib.load_universe(input_pipeline.parse_universe(c.data.train)[0])
            for c in (base, moved)]
  raw = [input_pipeline.universe_frames(p, 'himari_market') for p in panels]
  prepared = [input_pipeline.prepare_data(c) for c in (base, moved)]
  assert t < pd.Timestamp(prepared[0].summary['val_start'])  # inside the training rows
  changed_after = 0
  for f0, f1 in zip(prepared[0].summary['files'], prepared[1].summary['files'], strict=True):
    frame_index = raw[0][0][f0['name']].index
    before = _rows_until(frame_index, t)
    a, b = raw[0][1][f0['name']], raw[1][1][f1['name']]
    np.testing.assert_array_equal(a[before], b[before])
    changed_after += int(np.any(a[before[-1] + 1:] != b[before[-1] + 1:]))
    known = np.flatnonzero(frame_index + pd.Timedelta(hours=horizon) <= t) + f0['offset']
    np.testing.assert_array_equal(prepared[0].labels[known], prepared[1].labels[known])
    np.testing.assert_array_equal(prepared[0].valid[known], prepared[1].valid[known])
  assert changed_after == 3  # the market context moves every coin after t: the test can fail


@pytest.mark.slow
def test_tiny_pooled_run_trains_loads_and_its_decisions_before_t_ignore_later_bars(tmp_path):
  """Two tiny pooled runs, one with a coin perturbed after t (past the training rows): equal
  normalisers and parameters, and equal decisions on every coin for every bar <= t."""
  base = _config(_write_universe(tmp_path / 'a'))
  val_start = pd.Timestamp(input_pipeline.prepare_data(base).summary['val_start'])
  t = val_start + pd.Timedelta(hours=40)
  moved = _config(_write_universe(tmp_path / 'b', perturb_after=t, coin='btc'))
  loaded, prepared = [], []
  for name, config in (('a', base), ('b', moved)):
    metrics = train.train_and_evaluate(config, str(tmp_path / f'run_{name}'))
    assert np.isfinite(metrics['train_loss'])
    loaded.append(checkpoint.load_model(str(tmp_path / f'run_{name}'), which='latest'))
    prepared.append(input_pipeline.prepare_data(config))
  assert list(loaded[0].normalizers) == ['btc_usdt', 'eth_usdt', 'xtz_usdt']
  assert loaded[0].feature_set == 'himari_market'
  for asset, norm in loaded[0].normalizers.items():
    np.testing.assert_array_equal(norm.mean, loaded[1].normalizers[asset].mean)
    np.testing.assert_array_equal(norm.mean, prepared[0].normalizers[asset].mean)
  context = base.train.context_length
  for i, f in enumerate(prepared[0].summary['files']):
    before = np.flatnonzero(ohlcv.load_ohlcv(f['name']).index <= t)
    logits = [predict.predict_logits_from_features(
        m.params, m.model_config, p.features[p.asset_ids == i], context)
        for m, p in zip(loaded, prepared, strict=True)]
    assert np.isfinite(logits[0][before[-1]]).all()
    np.testing.assert_array_equal(logits[0][before], logits[1][before])
    assert not np.array_equal(logits[0][before[-1] + 1:], logits[1][before[-1] + 1:])
