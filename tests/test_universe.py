"""The universe loader: files -> one aligned panel with availability masks (SPEC section 12)."""

import gzip
import pathlib

import numpy as np
import pandas as pd
import pytest

from himari_jax.data import ohlcv, universe

UNIVERSE = pathlib.Path(__file__).resolve().parent.parent / 'data' / 'universe'
HEADER = 'timestamp,open,high,low,close,volume'


def _write(path, start, closes, volumes=None, skip=(), freq='1h', gzipped=False):
  """A CSV of bars from `start`, one per close, leaving out bar numbers in `skip`."""
  times = pd.date_range(start, periods=len(closes), freq=freq)
  volumes = volumes or [10.0] * len(closes)
  rows = [f'{t:%Y-%m-%d %H:%M:%S},{c},{c + 1},{c - 1},{c},{v}'
          for i, (t, c, v) in enumerate(zip(times, closes, volumes, strict=True)) if i not in skip]
  text = '\n'.join([HEADER, *rows]) + '\n'
  if gzipped:
    path.write_bytes(gzip.compress(text.encode()))
  else:
    path.write_text(text)
  return path


@pytest.fixture
def folder(tmp_path):
  """AAA from 00:00 to 09:00; BBB lists at 03:00; CCC misses 05:00-06:00, has a zero-volume
  placeholder at 02:00 and ends at 07:00."""
  _write(tmp_path / 'aaa_usdt_1h.csv', '2024-01-01 00:00', [100.0 + i for i in range(10)])
  _write(tmp_path / 'bbb_usdt_1h.csv.gz', '2024-01-01 03:00', [50.0 + i for i in range(7)],
         gzipped=True)
  _write(tmp_path / 'ccc_usdt_1h.csv', '2024-01-01 00:00',
         [20.0, 21.0, 21.0, 22.0, 23.0, 0, 0, 24.0], volumes=[5, 5, 0, 5, 5, 5, 5, 5],
         skip=(5, 6))
  (tmp_path / 'README.md').write_text('not bars')
  return tmp_path


def test_panel_aligns_coins_on_one_grid_with_masks(folder):
  panel = universe.load_universe(folder)
  assert panel.symbols == ('AAA', 'BBB', 'CCC')
  assert panel.index[0] == pd.Timestamp('2024-01-01 00:00', tz='UTC')
  assert panel.num_bars == 10 and panel.freq == pd.Timedelta('1h')
  assert panel.close.shape == panel.available.shape == (10, 3)
  np.testing.assert_array_equal(panel.close[:, 0], 100.0 + np.arange(10))
  # BBB: nothing before its listing at 03:00, its bars after.
  assert np.isnan(panel.close[:3, 1]).all() and not panel.available[:3, 1].any()
  np.testing.assert_array_equal(panel.close[3:, 1], 50.0 + np.arange(7))
  np.testing.assert_array_equal(panel.high[3:, 1], 51.0 + np.arange(7))
  # CCC: the gap and the end are NaN; the zero-volume bar keeps its price but is unavailable.
  expected = [True, True, False, True, True, False, False, True, False, False]
  np.testing.assert_array_equal(panel.available[:, 2], expected)
  assert np.isnan(panel.close[[5, 6, 8, 9], 2]).all()
  assert panel.close[2, 2] == 21.0 and panel.volume[2, 2] == 0.0
  assert np.isnan(panel.volume[[5, 6, 8, 9], 2]).all()
  # Every finite price is a bar of the file: nothing was filled.
  assert np.isfinite(panel.close).sum() == 10 + 7 + 6
  frame = panel.frame('CCC')
  assert len(frame) == 6 and list(frame.columns) == list(ohlcv.COLUMNS)
  assert frame.index[-1] == pd.Timestamp('2024-01-01 07:00', tz='UTC')


def test_window_selection_and_symbol_mapping(folder):
  panel = universe.load_universe(folder, start='2024-01-01 02:00', end='2024-01-01 04:00',
                                 symbols=['CCC', 'BBB'])
  assert panel.symbols == ('CCC', 'BBB') and panel.num_bars == 3
  np.testing.assert_array_equal(panel.available, [[False, False], [True, True], [True, True]])
  named = universe.load_universe(str(folder / '*_usdt_1h.csv*'),
                                 symbols={'bbb_usdt_1h.csv.gz': 'B', 'aaa_usdt_1h.csv': 'A'})
  assert named.symbols == ('B', 'A')
  assert named.sources[1].endswith('aaa_usdt_1h.csv')
  files = universe.load_universe([folder / 'aaa_usdt_1h.csv'])
  assert files.symbols == ('AAA',) and files.num_bars == 10


def test_clear_errors(folder, tmp_path_factory):
  empty = tmp_path_factory.mktemp('empty')
  with pytest.raises(ohlcv.DataError, match='no OHLCV files in'):
    universe.load_universe(empty)
  _write(folder / 'ddd_usdt_4h.csv', '2024-01-01 00:00', [10.0, 11.0, 12.0], freq='4h')
  with pytest.raises(ohlcv.DataError, match='ddd_usdt_4h.csv: bars are 4h apart; the universe '
                     'is on a 1h grid'):
    universe.load_universe(folder)
  (folder / 'ddd_usdt_4h.csv').unlink()
  _write(folder / 'aaa-usdt-copy.csv', '2024-01-01 00:00', [10.0, 11.0])
  with pytest.raises(ohlcv.DataError, match='symbol AAA is also the symbol of'):
    universe.load_universe(folder)
  with pytest.raises(ValueError, match='lists a coin twice'):
    universe.load_universe(folder, symbols=['BBB', 'BBB'])
  with pytest.raises(ohlcv.DataError, match='symbol.s. ZZZ not found'):
    universe.load_universe(folder, symbols=['ZZZ'])
  with pytest.raises(ohlcv.DataError, match='no bar of any coin'):
    universe.load_universe(folder, symbols=['BBB'], start='2023-01-01', end='2023-02-01')
  with pytest.raises(KeyError, match='holds BBB'):
    universe.load_universe(folder, symbols=['BBB']).column('AAA')


def test_real_universe_three_coins():
  """BTC, ETH and BCH around BCH's listing (2019-11-28 10:00) and a two-hour maintenance gap
  (2019-11-25 02:00) that every coin listed then shares."""
  panel = universe.load_universe(UNIVERSE, start='2019-11-24', end='2019-11-30 23:00',
                                 symbols=['BTC', 'ETH', 'BCH'])
  assert panel.num_bars == 7 * 24 and panel.symbols == ('BTC', 'ETH', 'BCH')
  gap = panel.index.get_indexer(pd.DatetimeIndex(['2019-11-25 02:00', '2019-11-25 03:00'],
                                                 tz='UTC'))
  assert not panel.available[gap].any() and np.isnan(panel.close[gap]).all()
  listing = panel.index.get_loc(pd.Timestamp('2019-11-28 10:00', tz='UTC'))
  assert not panel.available[:listing, 2].any() and panel.available[listing:, 2].all()
  assert panel.available[:, :2].sum() == 2 * (7 * 24 - 2)
  assert 6_000 < panel.close[0, 0] < 8_000  # BTC traded near 7,000 USDT then
  assert np.all(panel.low[panel.available] <= panel.close[panel.available])
