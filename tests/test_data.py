"""Loader tests: every SPEC section 2 defect, Binance klines, gaps and the bundled datasets."""

import gzip
import io
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from himari_jax.data import ohlcv as data

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
HEADER = 'timestamp,open,high,low,close,volume'
GOOD_ROWS = [
    '2024-03-01 00:00:00,100,101,99,100.5,10',
    '2024-03-01 01:00:00,100.5,102,100,101,12',
    '2024-03-01 02:00:00,101,101.5,100.2,100.8,0',
    '2024-03-01 03:00:00,100.8,103,100.8,102.9,7.5',
]


def _write(tmp_path, rows, header=HEADER, name='bars.csv'):
  path = tmp_path / name
  path.write_text('\n'.join(([header] if header else []) + rows) + '\n')
  return path


def _with(row_index, text):
  """GOOD_ROWS with row `row_index` replaced; it lands on file row row_index + 2."""
  rows = list(GOOD_ROWS)
  rows[row_index] = text
  return rows


def test_loads_canonical_csv(tmp_path):
  df = data.load_ohlcv(_write(tmp_path, GOOD_ROWS))
  assert list(df.columns) == ['open', 'high', 'low', 'close', 'volume']
  assert all(dtype == np.float64 for dtype in df.dtypes)
  assert df.index.name == 'timestamp'
  assert str(df.index.tz) == 'UTC'
  assert df.index[0] == pd.Timestamp('2024-03-01 00:00', tz='UTC')
  np.testing.assert_array_equal(df['close'], [100.5, 101, 100.8, 102.9])
  assert df.attrs['gaps']['count'] == 0
  assert df.attrs['source'].endswith('bars.csv')


def test_error_is_a_value_error_with_the_example_format(tmp_path):
  path = _write(tmp_path, _with(1, '2024-03-01 01:00:00,41000,41250.0,40900,41310.5,3'),
                name='btc.csv')
  with pytest.raises(ValueError) as info:
    data.load_ohlcv(path)
  assert isinstance(info.value, data.DataError)
  assert str(info.value).endswith('btc.csv row 3, column high: high 41250.0 < close 41310.5; '
                                  'fix or drop the row')


DEFECTS = {
    # name: (rows, header, expected row, expected column, words the message must contain)
    'missing column': (GOOD_ROWS, 'timestamp,open,high,low,close', 1, 'volume', 'missing'),
    'unparsable timestamp': (_with(2, 'yesterday,101,101.5,100.2,100.8,0'), HEADER, 4,
                             'timestamp', "'yesterday'"),
    'missing timestamp': (_with(1, ',100.5,102,100,101,12'), HEADER, 3, 'timestamp', 'missing'),
    'unparsable number': (_with(3, '2024-03-01 03:00:00,100.8,1O3,100.8,102.9,7.5'), HEADER, 5,
                          'high', "'1O3'"),
    'missing number': (_with(0, '2024-03-01 00:00:00,100,101,99,,10'), HEADER, 2, 'close',
                       'missing'),
    'nan': (_with(1, '2024-03-01 01:00:00,100.5,102,100,101,NaN'), HEADER, 3, 'volume', 'NaN'),
    'inf': (_with(2, '2024-03-01 02:00:00,101,inf,100.2,100.8,0'), HEADER, 4, 'high', 'inf'),
    'zero price': (_with(1, '2024-03-01 01:00:00,100.5,102,0,101,12'), HEADER, 3, 'low',
                   'not positive'),
    'negative price': (_with(0, '2024-03-01 00:00:00,-100,101,-101,100.5,10'), HEADER, 2, 'open',
                       'not positive'),
    'high below open': (_with(2, '2024-03-01 02:00:00,101,100.9,100.2,100.8,0'), HEADER, 4,
                        'high', 'high 100.9 < open 101'),
    'low above close': (_with(3, '2024-03-01 03:00:00,102.8,103,102.85,102.9,7.5'), HEADER, 5,
                        'low', 'low 102.85 > open 102.8'),
    'negative volume': (_with(1, '2024-03-01 01:00:00,100.5,102,100,101,-12'), HEADER, 3,
                        'volume', 'negative'),
    'duplicate timestamp': (_with(2, '2024-03-01 01:00:00,101,101.5,100.2,100.8,0'), HEADER, 4,
                            'timestamp', 'also at row 3'),
    'out of order': ([GOOD_ROWS[0], GOOD_ROWS[2], GOOD_ROWS[1], GOOD_ROWS[3]], HEADER, 4,
                     'timestamp', 'sort=True'),
    'header only': ([], HEADER, 2, None, 'no bars'),
}


@pytest.mark.parametrize('defect', sorted(DEFECTS))
def test_each_defect_names_file_row_and_column(tmp_path, defect):
  rows, header, row, column, words = DEFECTS[defect]
  path = _write(tmp_path, rows, header, name='defect.csv')
  with pytest.raises(data.DataError) as info:
    data.load_ohlcv(path)
  message = str(info.value)
  assert f'defect.csv row {row}' in message
  if column:
    assert f'column {column}' in message
  assert words in message


def test_empty_file_names_the_file(tmp_path):
  path = tmp_path / 'empty.csv'
  path.write_text('')
  with pytest.raises(data.DataError, match=r'empty\.csv: the file is empty'):
    data.load_ohlcv(path)


def test_row_numbers_are_file_lines_despite_blank_lines(tmp_path):
  rows = [GOOD_ROWS[0], '', GOOD_ROWS[1], '2024-03-01 02:00:00,101,101.5,100.2,100.8,-1']
  with pytest.raises(data.DataError, match=r'row 5, column volume'):
    data.load_ohlcv(_write(tmp_path, rows))


def test_counts_further_rows_with_the_same_defect(tmp_path):
  rows = [GOOD_ROWS[0], '2024-03-01 01:00:00,100.5,102,100,101,-12', GOOD_ROWS[2],
          '2024-03-01 03:00:00,100.8,103,100.8,102.9,-7.5']
  with pytest.raises(data.DataError, match=r'row 3, column volume: .*\(2 rows have this problem'):
    data.load_ohlcv(_write(tmp_path, rows))


def test_sort_fixes_order_but_not_duplicates(tmp_path):
  shuffled = [GOOD_ROWS[3], GOOD_ROWS[1], GOOD_ROWS[0], GOOD_ROWS[2]]
  df = data.load_ohlcv(_write(tmp_path, shuffled), sort=True)
  assert df.index.is_monotonic_increasing
  np.testing.assert_array_equal(df['close'], [100.5, 101, 100.8, 102.9])
  with pytest.raises(data.DataError, match='duplicate'):
    data.load_ohlcv(_write(tmp_path, GOOD_ROWS + [GOOD_ROWS[0]]), sort=True)


def test_timezone_offsets_become_utc_and_extra_columns_are_ignored(tmp_path):
  rows = ['2024-03-01T02:00:00+02:00,100,101,99,100.5,10,x',
          '2024-03-01T01:00:00Z,100.5,102,100,101,12,y']
  df = data.load_ohlcv(_write(tmp_path, rows, HEADER + ',note'))
  assert list(df.index) == [pd.Timestamp('2024-03-01 00:00', tz='UTC'),
                            pd.Timestamp('2024-03-01 01:00', tz='UTC')]
  assert list(df.columns) == ['open', 'high', 'low', 'close', 'volume']


def test_rows_with_extra_fields_are_rejected(tmp_path):
  rows = _with(1, '2024-03-01 01:00:00,100.5,102,100,101,12,99')
  with pytest.raises(data.DataError, match=r'row 3, column 7: the row has more fields'):
    data.load_ohlcv(_write(tmp_path, rows))


def test_reads_gzip_and_a_byte_order_mark(tmp_path):
  path = tmp_path / 'bars.csv.gz'
  path.write_bytes(gzip.compress(('\ufeff' + '\n'.join([HEADER] + GOOD_ROWS)).encode()))
  assert len(data.load_ohlcv(path)) == 4


def test_reads_named_buffers_with_the_name_in_messages():
  buffer = io.StringIO('\n'.join([HEADER, GOOD_ROWS[0], '2024-03-01 01:00:00,1,1,1,1,x']))
  buffer.name = 'upload.csv'
  with pytest.raises(data.DataError, match=r'upload\.csv row 3, column volume'):
    data.load_ohlcv(buffer)


def test_binance_klines_in_milliseconds_and_microseconds():
  ms = data.load_ohlcv(FIXTURES / 'BTCUSDT-1h-2024-12-tail.csv')
  us = data.load_ohlcv(FIXTURES / 'BTCUSDT-1h-2025-01-head.csv')
  assert ms.index[0] == pd.Timestamp('2024-12-31 20:00', tz='UTC')
  assert us.index[0] == pd.Timestamp('2025-01-01 00:00', tz='UTC')
  # The fixtures hold the bundled rows of those hours: they must read back identically.
  expected_ms = data.builtin_dataset('btc_usdt_1h_2020_2024').iloc[-4:]
  expected_us = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:4]
  pd.testing.assert_frame_equal(ms, expected_ms, check_freq=False)
  pd.testing.assert_frame_equal(us, expected_us, check_freq=False)
  both = pd.concat([ms, us])
  assert data.find_gaps(both).count == 0  # ms and us times land on one hourly grid


def test_binance_klines_are_validated_like_csv(tmp_path):
  lines = (FIXTURES / 'BTCUSDT-1h-2025-01-head.csv').read_text().splitlines()
  fields = lines[2].split(',')
  fields[3] = '99999999'  # low above open and close
  lines[2] = ','.join(fields)
  path = tmp_path / 'klines.csv'
  path.write_text('\n'.join(lines))
  with pytest.raises(data.DataError, match=r'klines\.csv row 3, column low'):
    data.load_ohlcv(path)


def test_binance_needs_six_fields(tmp_path):
  path = _write(tmp_path, ['1735689600000,1,1,1,1'], header=None, name='short.csv')
  with pytest.raises(data.DataError, match=r'short\.csv row 1: .*Binance klines'):
    data.load_ohlcv(path)


def _gappy_rows():
  """Bars at hours 0, 1, 4, 5, 9: gaps of 2 (02:00) and 3 (06:00) bars."""
  closes = {0: 100, 1: 101, 4: 99, 5: 98, 9: 103}
  return [f'2024-03-01 {h:02d}:00:00,{c},{c + 1},{c - 1},{c},5' for h, c in closes.items()]


def test_gap_report(tmp_path):
  df = data.load_ohlcv(_write(tmp_path, _gappy_rows()))
  report = data.find_gaps(df)
  assert (report.count, report.missing_bars, report.largest) == (2, 5, 3)
  assert report.gaps == ((pd.Timestamp('2024-03-01 02:00', tz='UTC'), 2),
                         (pd.Timestamp('2024-03-01 06:00', tz='UTC'), 3))
  assert df.attrs['gaps'] == report.to_dict()
  json.dumps(df.attrs['gaps'])  # attrs stay JSON-friendly
  assert '2 gaps, 5 missing bars, largest 3 bars from 2024-03-01 06:00' in str(report)
  assert len(df) == 5


def test_fill_gaps_inserts_flat_zero_volume_bars(tmp_path):
  df = data.load_ohlcv(_write(tmp_path, _gappy_rows()), fill_gaps=True)
  assert len(df) == 10
  assert df.index.equals(pd.date_range('2024-03-01', periods=10, freq='h', tz='UTC'))
  filled = df.loc['2024-03-01 06:00':'2024-03-01 08:00']
  assert (filled['volume'] == 0).all()
  for col in ('open', 'high', 'low', 'close'):
    assert (filled[col] == 98).all()  # the previous close, at 05:00
  assert df.loc['2024-03-01 02:00', 'close'] == 101
  assert df.attrs['filled_bars'] == 5
  assert df.attrs['gaps']['missing_bars'] == 5  # the report describes the file as read
  assert data.find_gaps(df).count == 0


def test_fill_gaps_refuses_bars_off_the_grid(tmp_path):
  rows = GOOD_ROWS[:3] + ['2024-03-01 03:30:00,100.8,103,100.8,102.9,7.5']
  with pytest.raises(data.DataError, match='not on the 1h grid'):
    data.load_ohlcv(_write(tmp_path, rows), fill_gaps=True)


def test_builtin_dataset_names():
  assert data.builtin_dataset_names() == [
      'btc_usdt_1h_2017_2019', 'btc_usdt_1h_2020_2024', 'btc_usdt_1h_2025_2026',
      'eth_usdt_1h_2017_2019', 'eth_usdt_1h_2020_2024']


def test_builtin_btc_2020_2024_matches_its_provenance_notes():
  df = data.builtin_dataset('btc_usdt_1h_2020_2024')
  assert len(df) == 43_816
  assert df.index[0] == pd.Timestamp('2020-01-01 00:00', tz='UTC')
  assert df.index[-1] == pd.Timestamp('2024-12-31 23:00', tz='UTC')
  assert df.loc['2021-01-01 00:00', 'open'] == 28923.63
  gaps = df.attrs['gaps']
  assert (gaps['count'], gaps['missing_bars'], gaps['largest']) == (15, 32, 5)
  filled = data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True)
  assert len(filled) == 43_816 + 32
  df.loc[df.index[0], 'close'] = -1.0  # callers get a copy, not the cached frame
  assert data.builtin_dataset('btc_usdt_1h_2020_2024').iloc[0]['close'] == 7177.02


def test_unknown_builtin_lists_valid_names():
  with pytest.raises(data.DataError, match='btc_usdt_1h_2020_2024.*eth_usdt_1h_2020_2024'):
    data.builtin_dataset('btc_2020')


def test_load_dataset_by_name_or_path(tmp_path):
  path = _write(tmp_path, GOOD_ROWS)
  assert len(data.load_dataset(str(path))) == 4
  assert len(data.load_dataset('btc_usdt_1h_2025_2026')) == 11_280
  with pytest.raises(data.DataError, match='no such file and not a builtin dataset'):
    data.load_dataset(str(tmp_path / 'nope.csv'))
  frames = data.load_datasets(f'btc_usdt_1h_2025_2026, {path}', fill_gaps=True)
  assert [len(f) for f in frames] == [11_280, 4]


# ----------------------------------------------------------------- other exchanges' layouts

CDD = FIXTURES / 'Binance_BTCUSDT_1h-cryptodatadownload.csv'
CDD_2019 = FIXTURES / 'Binance_BTCUSDT_1h-cryptodatadownload-2019.csv'
FREQTRADE = FIXTURES / 'BTC_USDT-1h.json'
CCXT = FIXTURES / 'ETH_USDT-1h-ccxt.csv'


def _bundled(name, start, bars):
  return data.builtin_dataset(name).loc[start:].iloc[:bars]


@pytest.mark.parametrize('path, layout, name, start, bars', [
    (CDD, 'cryptodatadownload', 'btc_usdt_1h_2017_2019', '2019-10-17 00:00', 48),
    (CDD_2019, 'cryptodatadownload', 'btc_usdt_1h_2017_2019', '2019-10-17 00:00', 48),
    (FREQTRADE, 'json_candles', 'btc_usdt_1h_2020_2024', '2020-03-12 00:00', 48),
    (CCXT, 'canonical', 'eth_usdt_1h_2020_2024', '2021-05-19 00:00', 36),
])
def test_exchange_layouts_read_back_the_bundled_bars(path, layout, name, start, bars):
  df = data.load_ohlcv(path)
  # The fixtures hold bundled rows (see fixtures/README.md): they must read back identically.
  pd.testing.assert_frame_equal(df, _bundled(name, start, bars), check_freq=False)
  assert df.attrs['layout'] == layout
  assert df.attrs['gaps']['count'] == 0


@pytest.mark.parametrize('path', [CDD, FREQTRADE])
def test_exchange_layouts_compute_features_and_backtest(path):
  from himari_jax.backtest import engine as backtest
  from himari_jax.data import features

  df = data.load_ohlcv(path)
  feats = features.compute_features(df)
  assert feats.shape == (len(df), features.NUM_FEATURES) and np.isfinite(feats).all()
  momentum = np.where(feats[:, 0] > 0, 2, 0)  # ret_1 > 0: BUY, else SELL
  result = backtest.run_backtest(df, momentum, np.ones(len(df)), backtest.make_params())
  assert np.asarray(result.fill_qty).any()
  equity = np.asarray(result.equity)
  assert np.isfinite(equity).all() and equity[-1] != 100_000.0


def test_cryptodatadownload_dates_when_there_is_no_unix_column(tmp_path):
  lines = CDD.read_text().splitlines()
  rows = [','.join(line.split(',')[1:]) for line in lines[1:]]  # drop the unix column
  path = tmp_path / 'cdd.csv'
  path.write_text('\n'.join([lines[0], *rows]) + '\n')
  df = data.load_ohlcv(path)
  assert df.index[0] == pd.Timestamp('2019-10-17 00:00', tz='UTC')
  assert df.index[12] == pd.Timestamp('2019-10-17 12:00', tz='UTC')  # 12-PM is noon
  pd.testing.assert_frame_equal(df, data.load_ohlcv(CDD), check_freq=False)


def test_common_column_spellings(tmp_path):
  expected = data.load_ohlcv(_write(tmp_path, GOOD_ROWS, name='canonical.csv'))
  rows = [r.split(',') for r in GOOD_ROWS]
  iso = [','.join([r[0].replace(' ', 'T') + 'Z', *r[1:], 'x']) for r in rows]
  spelled = data.load_ohlcv(_write(tmp_path, iso, header='Date,Open,High,Low,Close,Volume,Note'))
  pd.testing.assert_frame_equal(spelled, expected, check_freq=False)
  assert spelled.attrs['layout'] == 'csv'
  one_volume = _write(tmp_path, GOOD_ROWS, header='time,open,high,low,close,Volume BTC',
                      name='one_volume.csv')
  pd.testing.assert_frame_equal(data.load_ohlcv(one_volume), expected, check_freq=False)


def test_base_volume_is_picked_by_the_symbol(tmp_path):
  expected = data.load_ohlcv(_write(tmp_path, GOOD_ROWS, name='canonical.csv'))
  base_last = [f'{r.rsplit(",", 1)[0]},{float(r.rsplit(",", 1)[1]) * 100},{r.rsplit(",", 1)[1]},'
               'BTC-USDT' for r in GOOD_ROWS]
  path = _write(tmp_path, base_last,
                header='timestamp,open,high,low,close,Volume USDT,Volume BTC,symbol')
  pd.testing.assert_frame_equal(data.load_ohlcv(path), expected, check_freq=False)


def test_two_volumes_without_a_symbol_are_ambiguous(tmp_path):
  rows = [f'{r},{float(r.rsplit(",", 1)[1]) * 100}' for r in GOOD_ROWS]
  path = _write(tmp_path, ['https://example.com/export', *rows],
                header=None, name='two_volumes.csv')
  path.write_text(path.read_text().replace(
      'https://example.com/export\n',
      'https://example.com/export\ndate,open,high,low,close,Volume BTC,Volume USDT\n'))
  with pytest.raises(data.DataError, match=r'two_volumes\.csv row 2, column volume btc: 2 volume '
                                           r'columns \(volume btc, volume usdt\) and no symbol'):
    data.load_ohlcv(path)


def test_newest_first_is_reversed_but_other_disorder_is_not(tmp_path):
  df = data.load_ohlcv(_write(tmp_path, GOOD_ROWS[::-1]))
  assert df.index.is_monotonic_increasing
  np.testing.assert_array_equal(df['close'], [100.5, 101, 100.8, 102.9])
  with pytest.raises(data.DataError, match=r'row 3, column timestamp: .*out of order'):
    data.load_ohlcv(_write(tmp_path, [GOOD_ROWS[3], GOOD_ROWS[2], GOOD_ROWS[0], GOOD_ROWS[1]]))


def test_newest_first_errors_still_name_file_lines():
  lines = CDD.read_text().splitlines()
  fields = lines[5].split(',')
  fields[4] = '1.0'  # high below open and close
  buffer = io.StringIO('\n'.join([*lines[:5], ','.join(fields), *lines[6:]]))
  buffer.name = 'cdd.csv'
  with pytest.raises(data.DataError, match=r'cdd\.csv row 6, column high: high 1\.0 <'):
    data.load_ohlcv(buffer)


@pytest.mark.parametrize('text, words', [
    ('[[1583971200000, 1, 2, 0.5, 1.5]]', r'row 1 \(candle 1\): expected \[time_ms, open'),
    ('[[1583971200000, 1, 2, 0.5, 1.5, 3], [1583974800000, 1, 2, 0.5, null, 3]]',
     r'row 2, column close: the value is missing'),
    ('[[1583971200000, 1, 2, 0.5, 1.5, 3], [1583974800000, 1, 2, 0.5, NaN, 3]]',
     r'row 2, column close: close is nan'),
    ('[[1583971200000, 1, 2, 0.5, 1.5, 3],\n [1583974800000, 1, 2, 0.5, 1.5 3]]',
     r'row 2: not valid JSON'),
    ('[]', 'non-empty JSON array'),
])
def test_json_candle_defects(text, words):
  buffer = io.StringIO(text)
  buffer.name = 'candles.json'
  with pytest.raises(data.DataError, match=r'candles\.json.*' + words):
    data.load_ohlcv(buffer)


def test_binance_rest_klines_with_string_prices():
  klines = [[1583971200000, '7934.58', '7966.17', '7897.63', '7913.42', '1772.473459',
             1583974799999, '14049823.3', 25361, '903.5', '7161923.1', '0']]
  buffer = io.StringIO(json.dumps(klines))
  df = data.load_ohlcv(buffer)
  assert df.index[0] == pd.Timestamp('2020-03-12 00:00', tz='UTC')
  assert df.iloc[0].tolist() == [7934.58, 7966.17, 7897.63, 7913.42, 1772.473459]


def test_separate_date_and_time_columns_are_ambiguous(tmp_path):
  rows = [f'2024.03.01,{h:02d}:00,100,101,99,100.5,10' for h in range(3)]
  path = _write(tmp_path, rows, header='Date,Time,Open,High,Low,Close,Volume', name='mt.csv')
  with pytest.raises(data.DataError, match=r'mt\.csv row 1, column time: separate date and time'):
    data.load_ohlcv(path)


# ------------------------------------------------------------------------ plausibility

HOUR = pd.Timedelta('1h')


def _bars_csv(tmp_path, name='bars.csv', *, every='1h', hole=None, jump_at=None, bars=400):
  """Bundled BTC 2025 bars as a CSV: `every` apart, `hole` (start, bars) left out, and the
  prices of bars from `jump_at` on multiplied by 1000 (a unit error)."""
  df = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:bars].copy()
  df.index = pd.date_range(df.index[0], periods=len(df), freq=every, name='timestamp')
  if jump_at is not None:
    df.loc[df.index[jump_at]:, list(data.PRICE_COLUMNS)] *= 1000
  if hole is not None:
    df = df.drop(df.index[hole[0]:hole[0] + hole[1]])
  df.to_csv(tmp_path / name)
  return tmp_path / name


def test_an_interval_other_than_the_expected_one_is_refused(tmp_path):
  from himari_jax.data import plausibility

  df = data.load_ohlcv(_bars_csv(tmp_path, every='5min'))
  with pytest.raises(data.DataError, match=r"^bars.csv: the bars are 5min apart but "
                                           r"--config.periods_per_year=8760 means 1h bars; "):
    plausibility.check_bars(df, source='bars.csv', expected_interval=HOUR,
                            interval_setting='--config.periods_per_year=8760')
  report = plausibility.check_bars(df, source='bars.csv', log=lambda line: None,
                                   expected_interval=plausibility.interval_of(105_120),
                                   interval_setting='--config.periods_per_year=105120')
  assert report['interval'] == '5min'


def test_filled_gaps_are_reported_with_count_longest_and_where(tmp_path):
  from himari_jax.data import plausibility

  df = data.load_ohlcv(_bars_csv(tmp_path, hole=(100, 72)), fill_gaps=True)
  lines = []
  report = plausibility.check_bars(df, source='bars.csv', expected_interval=HOUR,
                                   interval_setting='x', log=lines.append)
  assert lines == ['bars.csv: 72 missing bar(s) in 1 gap(s), filled with 72 flat zero-volume '
                   'bars; the longest, 72 bars, from 2025-01-05 04:00 UTC']
  assert report['gaps']['filled_bars'] == 72 and report['gaps']['largest'] == 72
  assert report['gaps']['gaps'] == [['2025-01-05T04:00:00+00:00', 72]]


def test_a_large_single_bar_move_is_a_warning_naming_the_bar_or_refused(tmp_path):
  from himari_jax.data import plausibility

  df = data.load_ohlcv(_bars_csv(tmp_path, jump_at=300))
  lines = []
  report = plausibility.check_bars(df, source='bars.csv', expected_interval=HOUR,
                                   interval_setting='x', log=lines.append)
  close = df['close'].to_numpy()
  move = close[300] / close[299] - 1  # about 1000x
  assert lines == ['bars.csv: 1 bar(s) move more than 50% from the previous close; the '
                   f'largest, {move:+.1%}, at bar 2025-01-13 12:00 UTC: check the data (refuse '
                   'such data with --config.refuse_large_moves=True)']
  assert report['large_moves'] == [['2025-01-13T12:00:00+00:00', move]] and move > 900
  with pytest.raises(data.DataError, match=r'^bars.csv: 1 bar\(s\) move .* at bar 2025-01-13 '
                                           r'12:00 UTC; fix the data, or raise '
                                           r'--config.data.max_bar_move'):
    plausibility.check_bars(df, source='bars.csv', expected_interval=HOUR, interval_setting='x',
                            refuse_large_moves=True, setting_prefix='--config.data.')
  assert not plausibility.check_bars(df, source='bars.csv', expected_interval=HOUR,
                                     interval_setting='x', max_bar_move=1000.0)['large_moves']


def test_training_data_is_checked_and_the_checks_kept_in_the_summary(tmp_path, tiny_config):
  from himari_jax.data import input_pipeline

  tiny_config.data.train = str(_bars_csv(tmp_path, hole=(500, 72), bars=1500))
  prepared = input_pipeline.prepare_data(tiny_config)
  (checks,) = [f['checks'] for f in prepared.summary['files']]
  assert checks['interval'] == '1h' and checks['gaps']['filled_bars'] == 72
  tiny_config.data.train = str(_bars_csv(tmp_path, '5min.csv', every='5min', bars=1500))
  with pytest.raises(data.DataError, match='5min.csv: the bars are 5min apart but training'):
    input_pipeline.prepare_data(tiny_config)
