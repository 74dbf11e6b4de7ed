"""Public functions refuse inputs they would silently misread, with an error naming the fix."""

import numpy as np
import pandas as pd
import pytest

from himari_jax.backtest import engine as backtest
from himari_jax.data import features
from himari_jax.data import ohlcv as data


@pytest.fixture(scope='module')
def bars():
  return data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:300]


def test_compute_features_accepts_a_loaded_frame(bars):
  assert features.compute_features(bars).shape == (300, features.NUM_FEATURES)


@pytest.mark.parametrize('defect, words', [
    ('unsorted', r'row 11: .* comes after .*df\.sort_index\(\)'),
    ('duplicated', r'row 11: duplicate bar time .*df\.index\.duplicated'),
    ('nan', r'row 11 \(2025-01-01 11:00:00\+00:00\), column close: nan .*drop or repair'),
    ('inf', r'row 11 \(2025-01-01 11:00:00\+00:00\), column volume: inf'),
    ('no time index', r'RangeIndex, not the bar times; set a DatetimeIndex'),
    ('missing column', r'missing column\(s\) volume'),
])
def test_compute_features_refuses_bad_frames(bars, defect, words):
  frame = bars.copy()
  if defect == 'unsorted':
    frame = frame.iloc[np.r_[0:10, 11, 10, 12:300]]
  elif defect == 'duplicated':
    frame = frame.iloc[np.r_[0:11, 10, 12:300]]
  elif defect == 'nan':
    frame.iloc[11, frame.columns.get_loc('close')] = np.nan
  elif defect == 'inf':
    frame.iloc[11, frame.columns.get_loc('volume')] = np.inf
  elif defect == 'no time index':
    frame = frame.reset_index()
  else:
    frame = frame.drop(columns='volume')
  with pytest.raises(data.DataError, match=f'compute_features input .*{words}'):
    features.compute_features(frame)


def test_backtest_refuses_boolean_actions(bars):
  signal = (bars['close'] > bars['open']).to_numpy()
  confidence = np.ones(len(bars))
  with pytest.raises(ValueError, match=r'actions are booleans; .*np\.where\(signal, 2, 0\)'):
    backtest.run_backtest(bars, signal, confidence, backtest.make_params())
  result = backtest.run_backtest(bars, np.where(signal, 2, 0), confidence, backtest.make_params())
  assert np.asarray(result.fill_qty).any()


def test_check_frame_names_the_source():
  frame = pd.DataFrame({c: [1.0, 1.0] for c in data.COLUMNS},
                       index=pd.DatetimeIndex(['2024-01-01 01:00', '2024-01-01 00:00'], tz='UTC'))
  frame.attrs['source'] = 'btc.csv'
  with pytest.raises(data.DataError, match=r'^bars \(btc\.csv\) row 1: '):
    data.check_frame(frame, 'bars')
