"""Label tests: hand-built paths, a look-ahead audit on real data, class weights."""

import numpy as np
import pandas as pd
import pytest

from himari_jax import data
from himari_jax import labels as L
from himari_jax.labels import BUY, HOLD, SELL


@pytest.fixture(scope='module')
def btc():
  return data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True)


def _frame(close, low=None):
  close = np.asarray(close, np.float64)
  low = close * 0.999 if low is None else np.asarray(low, np.float64)
  index = pd.date_range('2024-01-01', periods=len(close), freq='h', tz='UTC', name='timestamp')
  return pd.DataFrame({'open': close, 'high': close * 1.001, 'low': low, 'close': close,
                       'volume': 1.0}, index=index)


def test_threshold_rule_by_hand():
  close = [100, 100, 102, 100, 98.5, 99.5, 100, 100]
  labels, valid = L.make_labels(_frame(close), 'threshold', horizon=2, threshold=0.01)
  # t=0: 102/100-1 = +2% BUY; t=1: 100/100 HOLD; t=2: 98.5/102-1 = -3.4% SELL;
  # t=3: 99.5/100 HOLD; t=4: 100/98.5-1 = +1.5% BUY; t=5: 100/99.5-1 = +0.5% HOLD.
  np.testing.assert_array_equal(labels[:6], [BUY, HOLD, SELL, HOLD, BUY, HOLD])
  np.testing.assert_array_equal(valid, [True] * 6 + [False] * 2)
  assert labels.dtype == np.int32 and valid.dtype == bool
  # Exactly +-threshold is HOLD (strict inequalities).
  labels, _ = L.make_labels(_frame([100, 150, 75]), horizon=1, threshold=0.5)
  assert labels[0] == HOLD and labels[1] == HOLD


def test_default_rule_is_the_seed():
  close = 100 * 1.002 ** np.arange(20)  # +1.2% over 6 bars
  labels, valid = L.make_labels(_frame(close))
  assert valid.sum() == 14 and (labels[valid] == BUY).all()


def _sharpe_label(path, low=None):
  """Label at t=0 of a 25-bar frame: close_0 = 100, then `path` (24 closes)."""
  close = np.r_[100.0, path]
  labels, valid = L.make_labels(_frame(close, None if low is None else np.r_[99.9, low]),
                                'sharpe')
  assert valid[0] and not valid[1:].any()
  return labels[0]


def test_sharpe_rule_by_hand():
  rise = 100 * (1 + 0.04 * np.arange(1, 25) / 24)  # steady +4%: mean/std >> 1
  assert _sharpe_label(rise) == BUY
  assert _sharpe_label(2 * 100 - rise) == SELL  # steady -4%
  dip = rise * 0.999
  dip[5] = 97.0  # a low 3% under close_t blocks the BUY (2.5% allowed)
  assert _sharpe_label(rise, low=dip) == HOLD
  shallow = rise * 0.999
  shallow[5] = 97.6  # 2.4% under: still a BUY
  assert _sharpe_label(rise, low=shallow) == BUY
  small = 100 * (1 + 0.02 * np.arange(1, 25) / 24)  # ret_24 = 2% < 3%
  assert _sharpe_label(small) == HOLD
  noisy = rise.copy()
  noisy[::2] = 90.0  # ends +4% but mean / std < 1
  assert _sharpe_label(noisy, low=np.minimum(noisy, rise) * 0.999) == HOLD
  assert _sharpe_label(np.full(24, 100.0)) == HOLD  # flat: std 0


@pytest.mark.parametrize('kind, horizon, lows_matter', [('threshold', 6, False),
                                                         ('sharpe', 24, True)])
def test_label_depends_only_on_bars_t_to_t_plus_h(btc, kind, horizon, lows_matter):
  frame = btc.iloc[5000:7000]
  base, valid = L.make_labels(frame, kind)
  assert valid.sum() == len(frame) - horizon
  rng = np.random.default_rng(0)
  changed = 0
  for t in rng.integers(50, len(frame) - horizon - 50, size=20):
    outside = frame.copy()
    noise = rng.uniform(0.5, 1.5, size=len(frame))
    noise[t:t + horizon + 1] = 1.0  # keep bars t .. t+h
    outside[['open', 'high', 'low', 'close']] *= noise[:, None]
    assert L.make_labels(outside, kind)[0][t] == base[t], t
    inside = frame.copy()
    c = inside['close'].iat[t]
    # Rewrite the future (t, t+h] as a steady 5% fall: the label must follow it.
    path = c * (1 - 0.05 * np.arange(1, horizon + 1) / horizon)
    inside.iloc[t + 1:t + horizon + 1, inside.columns.get_loc('close')] = path
    inside.iloc[t + 1:t + horizon + 1, inside.columns.get_loc('low')] = path * 0.999
    new = L.make_labels(inside, kind)[0][t]
    assert new == SELL, t
    changed += new != base[t]
  assert changed > 0
  if lows_matter:
    # A lower low inside the window alone can turn a BUY into HOLD.
    buy_t = int(np.flatnonzero(base == BUY)[0])
    dipped = frame.copy()
    dipped.iloc[buy_t + 3, dipped.columns.get_loc('low')] = frame['close'].iat[buy_t] * 0.9
    assert L.make_labels(dipped, kind)[0][buy_t] == HOLD


def test_class_weights():
  labels = np.array([0, 1, 1, 1, 2, 2, 0, 0], np.int32)
  valid = np.array([True] * 6 + [False] * 2)  # counts 1, 3, 2 over 6 valid labels
  np.testing.assert_allclose(L.class_weights(labels, valid, 'inverse'), [2.0, 2 / 3, 1.0],
                             rtol=1e-6)
  np.testing.assert_allclose(L.class_weights(labels, valid, 'sqrt'),
                             np.sqrt([2.0, 2 / 3, 1.0]), rtol=1e-6)
  np.testing.assert_array_equal(L.class_weights(labels, valid, 'fixed'),
                                np.float32([2.5, 0.83, 2.5]))
  np.testing.assert_array_equal(L.class_weights(labels, valid, 'none'), np.ones(3))
  assert L.class_weights(labels, valid).dtype == np.float32
  np.testing.assert_allclose(L.class_weights(np.array([1, 1, 2]), np.ones(3, bool), 'inverse'),
                             [0.0, 0.5, 1.0])  # an absent class gets 0
  with pytest.raises(ValueError, match='inverse'):
    L.class_weights(labels, valid, 'balanced')


def test_unknown_kind_and_horizons():
  with pytest.raises(ValueError, match='threshold'):
    L.make_labels(_frame([1.0, 2.0]), 'triple_barrier')
  assert L.label_horizon('threshold') == 6
  assert L.label_horizon('sharpe') == 24
  assert L.label_horizon('threshold', horizon=12, threshold=0.02) == 12
  with pytest.raises(TypeError):
    L.make_labels(_frame([1.0, 2.0]), 'threshold', min_return=0.1)


def test_seed_label_distribution_on_btc_2020_2024(btc):
  labels, valid = L.make_labels(btc, 'threshold', horizon=6, threshold=0.01)
  dist = L.label_distribution(labels, valid)
  print('\nBTC/USDT 2020-2024, threshold rule (h=6, 1%):',
        ', '.join(f'{a} {dist["shares"][a]:.1%} ({dist["counts"][a]:,})' for a in L.ACTION_NAMES),
        f'of {dist["n"]:,} labels')
  assert dist['n'] == len(btc) - 6
  assert sum(dist['counts'].values()) == dist['n']
  assert 0.55 <= dist['shares']['HOLD'] <= 0.75
  assert 0.1 <= dist['shares']['BUY'] <= 0.25 and 0.1 <= dist['shares']['SELL'] <= 0.25
