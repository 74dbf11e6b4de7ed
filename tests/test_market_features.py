"""The 'himari_market' feature set: hand-computed context values and prefix invariance."""

import dataclasses
import pathlib

import numpy as np
import pandas as pd
import pytest

from himari_jax.data import features as F
from himari_jax.data import market_features as M
from himari_jax.data import universe

UNIVERSE = pathlib.Path(__file__).resolve().parent.parent / 'data' / 'universe'
NAMES = {name: j for j, name in enumerate(F.MARKET_FEATURE_NAMES)}


def _panel(close, available=None):
  close = np.asarray(close, np.float64)
  available = np.isfinite(close) if available is None else available
  index = pd.date_range('2024-01-01', periods=len(close), freq='h', tz='UTC', name='timestamp')
  volume = np.where(np.isfinite(close), 1.0, np.nan)
  return universe.Panel(index=index, symbols=('BTC', 'AAA', 'BBB', 'CCC'), open=close,
                        high=close, low=close, close=close, volume=volume, available=available,
                        freq=pd.Timedelta('1h'), sources=('btc', 'aaa', 'bbb', 'ccc'))


def _head(panel, n):
  """The panel as loading it with an earlier end would give it."""
  return dataclasses.replace(panel, index=panel.index[:n], **{
      name: getattr(panel, name)[:n]
      for name in ('open', 'high', 'low', 'close', 'volume', 'available')})


def test_context_values_by_hand():
  rng = np.random.default_rng(0)
  close = 100 * np.exp(np.cumsum(0.01 * rng.normal(size=(60, 4)), axis=0))
  close[:30, 3] = np.nan  # CCC lists at hour 30
  close[40, 2] = np.nan  # BBB misses hour 40
  context = M.market_context(_panel(close))
  assert context.shape == (60, 4, 11) and np.isfinite(context).all()
  t = 41
  np.testing.assert_allclose(context[t, :, NAMES['btc_ret_6']], close[t, 0] / close[t - 6, 0] - 1)
  r1 = close[t] / close[t - 1] - 1  # BBB has no return into hour 41: left out
  np.testing.assert_allclose(context[t, 0, NAMES['market_ret_1']], np.nanmean(r1), rtol=1e-12)
  assert np.isnan(r1[2]) and np.isfinite(r1).sum() == 3
  r24 = close[t] / close[t - 24] - 1  # CCC listed < 24 hours before: left out
  order = np.argsort(r24[:3])
  expected = np.zeros(4)
  expected[order] = [-1.0, 0.0, 1.0]
  np.testing.assert_allclose(context[t, :, NAMES['rank_ret_24']], expected)
  assert context[t, 0, NAMES['breadth_24']] == pytest.approx(2 * np.mean(r24[:3] > 0) - 1)
  returns = close[1:, 0] / close[:-1, 0] - 1
  assert context[t, 1, NAMES['btc_vol_24']] == pytest.approx(returns[t - 24:t].std())
  assert (context[:12, :, NAMES['btc_vol_24']] == 0).all()  # fewer than half of its window
  assert (context[:24, :, NAMES['rank_ret_24']] == 0).all()


def test_compute_features_refuses_the_set_without_a_panel():
  frame = pd.DataFrame({c: np.full(10, 1.0) for c in ('open', 'high', 'low', 'close', 'volume')},
                       index=pd.date_range('2024-01-01', periods=10, freq='h', tz='UTC'))
  with pytest.raises(F.FeatureSetError, match='needs the other coins.*panel_features'):
    F.compute_features(frame, 'himari_market')


def test_market_features_are_prefix_invariant_on_real_coins():
  """As `leak_audit` does for one coin: recompute on prefixes of the panel (BCH lists inside
  the window, a maintenance gap cuts every coin) and require every earlier row unchanged."""
  panel = universe.load_universe(UNIVERSE, start='2019-11-20', end='2019-12-08',
                                 symbols=['BTC', 'ETH', 'BCH', 'XTZ'])
  full = M.panel_features(panel)
  for symbol, state in full.items():
    assert state.shape == (len(panel.frame(symbol)), F.NUM_FEATURES)
    np.testing.assert_array_equal(state[:, :F.NUM_COMPUTED],
                                  F.compute_features(panel.frame(symbol))[:, :F.NUM_COMPUTED])
  assert np.abs(full['ETH'][200:, F.NUM_COMPUTED:]).min(axis=0).max() > 0
  listing = panel.index.get_loc(pd.Timestamp('2019-11-28 10:00', tz='UTC'))
  for cut in (30, 130, listing, listing + 1, listing + 30, 300, panel.num_bars - 1):
    prefix = M.panel_features(_head(panel, cut))
    for symbol, state in prefix.items():
      np.testing.assert_array_equal(state, full[symbol][:len(state)], err_msg=f'{symbol} {cut}')
    assert len(prefix['BCH']) == max(cut - listing, 0)
