"""Label tests: hand-built paths, a look-ahead audit on real data, class weights."""

import numpy as np
import pandas as pd
import pytest

from himari_jax.constants import BUY, HOLD, SELL
from himari_jax.data import labels as L
from himari_jax.data import ohlcv as data


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
  with pytest.raises(ValueError, match='triple_barrier'):
    L.make_labels(_frame([1.0, 2.0]), 'momentum')
  assert L.label_horizon('threshold') == 6
  assert L.label_horizon('sharpe') == 24
  assert L.label_horizon('volatility') == 6 and L.label_horizon('triple_barrier') == 24
  with pytest.raises(ValueError, match='horizon must be > 0'):
    L.make_labels(_frame(np.ones(10)), 'threshold', horizon=0)
  with pytest.raises(ValueError, match='horizon must be > 0'):
    L.make_labels(_frame(np.ones(10)), 'volatility', horizon=-3)
  with pytest.raises(ValueError, match='5 bars are too few for label horizon 6'):
    L.make_labels(_frame(np.ones(5)), 'threshold')
  with pytest.raises(ValueError, match='24 bars are too few'):
    L.make_labels(_frame(np.ones(24)), 'triple_barrier')
  assert L.label_horizon('threshold', horizon=12, threshold=0.02) == 12
  with pytest.raises(TypeError):
    L.make_labels(_frame(np.ones(20)), 'threshold', min_return=0.1)


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


def test_rolling_sigma_by_hand():
  # Log returns +a, -a, +a, ...: the std (ddof 1) of any 4 of them is a * sqrt(4 / 3).
  a = 0.01
  close = 100 * np.exp(np.cumsum(np.r_[0.0, np.tile([a, -a], 10)]))
  sigma = L.rolling_sigma(close, window=4)
  assert np.isnan(sigma[:4]).all()
  np.testing.assert_allclose(sigma[4:], a * np.sqrt(4 / 3), rtol=1e-9)
  with pytest.raises(ValueError, match='window'):
    L.rolling_sigma(close, window=1)


def test_volatility_rule_by_hand():
  # Calm start (sigma = a * sqrt(4/3) over window 4), then moves over h = 2 bars.
  a = 0.005
  logs = np.r_[0.0, np.tile([a, -a], 3)]  # bars 0..6, sigma_6 = 0.00577
  close = list(100 * np.exp(np.cumsum(logs)))
  c6 = close[-1]
  close += [c6 * 1.005, c6 * 1.009, c6 * 1.0, c6 * 0.985, c6 * 0.98]
  labels, valid = L.make_labels(_frame(close), 'volatility', horizon=2, k=1.0, window=4)
  band6 = a * np.sqrt(4 / 3) * np.sqrt(2)  # 0.00816
  assert np.all(~valid[:4]) and np.all(~valid[-2:]) and valid[4:-2].all()
  # t = 6: close_8 / close_6 - 1 = +0.9 % > 0.816 %: BUY.
  assert L.rolling_sigma(np.asarray(close), window=4)[6] * np.sqrt(2) == pytest.approx(band6)
  assert labels[6] == BUY
  # The fixed 1 % rule calls the same +0.9 % move HOLD.
  assert L.make_labels(_frame(close), 'threshold', horizon=2)[0][6] == HOLD
  # A cost floor above the move makes it HOLD.
  assert L.make_labels(_frame(close), 'volatility', horizon=2, window=4,
                       cost_floor=0.011)[0][6] == HOLD


def _barrier_frame(path_high, path_low, path_close):
  """Bar 0 closes at 100 after 4 bars of known volatility; then the given future bars."""
  a = 0.01
  close = list(100 * np.exp(np.cumsum(np.r_[0.0, np.tile([a, -a], 2)])))  # ends at 100
  high = [c * 1.0001 for c in close] + list(path_high)
  low = [c * 0.9999 for c in close] + list(path_low)
  close = close + list(path_close)
  frame = _frame(close)
  frame['high'], frame['low'] = high, low
  return frame


@pytest.mark.parametrize('high, low, close, expected', [
    ([101, 103.5, 101], [99, 100, 100], [100, 101, 100], BUY),     # upper touched first
    ([101, 103.5, 101], [96.5, 100, 100], [99, 101, 100], SELL),   # lower first (bar 1)
    ([104, 101, 101], [96, 99, 99], [103, 100, 100], BUY),        # both in bar 1: close nearer up
    ([104, 101, 101], [96, 99, 99], [97, 100, 100], SELL),        # both: close nearer down
    ([104, 101, 101], [96, 99, 99], [100, 100, 100], SELL),       # both, equidistant: SELL
    ([101.8, 101.8, 101.8], [98.2, 98.2, 98.2], [101, 101, 101.5], HOLD),  # vertical
])
def test_triple_barrier_by_hand(high, low, close, expected):
  # sigma = 0.01 * sqrt(4/3) over window 4; barriers at 100 * (1 +- sigma * sqrt(3)) = +-2 %.
  frame = _barrier_frame(high, low, close)
  labels, valid = L.make_labels(frame, 'triple_barrier', horizon=3, window=4)
  t = 4
  assert valid[t] and not valid[t + 1:].any() and not valid[:t].any()
  assert labels[t] == expected
  if expected == HOLD:
    # Narrower barriers (1.6 %) let the 1.8 % highs count.
    assert L.make_labels(frame, 'triple_barrier', horizon=3, window=4, k_up=0.8,
                         k_down=0.8)[0][t] != HOLD


def test_cost_floor_on_threshold_and_sharpe():
  close = 100 * 1.002 ** np.arange(20)  # +1.2 % over 6 bars
  assert (L.make_labels(_frame(close), cost_floor=0.003)[0][:14] == BUY).all()
  assert (L.make_labels(_frame(close), cost_floor=0.013)[0][:14] == HOLD).all()
  rise = 100 * (1 + 0.04 * np.arange(1, 25) / 24)
  assert _sharpe_label(rise) == BUY
  labels, _ = L.make_labels(_frame(np.r_[100.0, rise]), 'sharpe', cost_floor=0.05)
  assert labels[0] == HOLD
  assert L.round_trip_cost(0.001, 0.0005) == pytest.approx(0.003)


RULES = [('threshold', {}), ('sharpe', {}), ('volatility', {}),
         ('volatility', dict(cost_floor=0.003)), ('triple_barrier', {}),
         ('triple_barrier', dict(horizon=6, k_up=0.5, k_down=1.5))]


@pytest.mark.parametrize('kind, params', RULES, ids=lambda x: str(x))
def test_label_leak_audit_at_many_cut_points(btc, kind, params):
  """Label t may change only when bars in (t, t+h] (or, via sigma_t, bars <= t) change."""
  frame = btc.iloc[10_000:13_000]
  horizon = L.label_horizon(kind, **params)
  base, base_valid = L.make_labels(frame, kind, **params)
  rng = np.random.default_rng(1)
  changed = 0
  for cut in rng.integers(300, len(frame) - 50, size=25):
    future = frame.copy()
    noise = rng.uniform(0.8, 1.2, size=(len(frame) - cut - 1, 1))
    future.iloc[cut + 1:, :4] = frame.iloc[cut + 1:, :4].to_numpy() * noise
    labels, valid = L.make_labels(future, kind, **params)
    safe = slice(0, cut - horizon + 1)  # every t with t + h <= cut
    np.testing.assert_array_equal(labels[safe], base[safe], err_msg=f'cut {cut}')
    np.testing.assert_array_equal(valid[safe], base_valid[safe], err_msg=f'cut {cut}')
    changed += np.sum(labels[cut - horizon + 1:cut + 1] != base[cut - horizon + 1:cut + 1])
  assert changed > 0  # labels whose window the change reaches do move


def test_sigma_depends_only_on_bars_up_to_t(btc):
  close = btc['close'].to_numpy()[10_000:13_000]
  base = L.rolling_sigma(close)
  rng = np.random.default_rng(2)
  for cut in rng.integers(200, len(close) - 10, size=25):
    later = close.copy()
    later[cut + 1:] *= rng.uniform(0.5, 1.5, size=len(close) - cut - 1)
    sigma = L.rolling_sigma(later)
    np.testing.assert_array_equal(sigma[:cut + 1], base[:cut + 1])
    assert not np.array_equal(sigma[cut + 1:], base[cut + 1:])


def test_label_rates_btc_vs_eth():
  frames = {'BTC': data.builtin_dataset('btc_usdt_1h_2017_2019', fill_gaps=True),
            'ETH': data.builtin_dataset('eth_usdt_1h_2017_2019', fill_gaps=True)}
  fixed = L.label_rates(frames, 'threshold')
  scaled = L.label_rates(frames, 'volatility')
  print('\nfixed 1 % band:\n', fixed.round(3), '\nvolatility band:\n', scaled.round(3))
  assert list(fixed.columns) == ['n', 'SELL', 'HOLD', 'BUY', 'trade_share']
  np.testing.assert_allclose(fixed[['SELL', 'HOLD', 'BUY']].sum(axis=1), 1.0)
  # The fixed band labels the more volatile ETH mostly BUY / SELL, and far more than BTC ...
  assert fixed.loc['ETH', 'trade_share'] > 0.5
  assert fixed.loc['ETH', 'trade_share'] - fixed.loc['BTC', 'trade_share'] > 0.08
  # ... the volatility band treats both alike.
  assert scaled.loc['ETH', 'trade_share'] < 0.5
  assert abs(scaled.loc['ETH', 'trade_share'] - scaled.loc['BTC', 'trade_share']) < 0.03
