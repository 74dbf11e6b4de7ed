"""Binance archive handling: checksum verification, parsing, offline errors, the CLI."""

import hashlib
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from himari_jax.data import binance
from himari_jax.data import ohlcv as data

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
REPO = pathlib.Path(__file__).parent.parent


def _write_archive(folder, month, csv_name, checksum=None):
  name = binance.archive_name('BTCUSDT', '1h', month)
  zip_path = folder / name
  with zipfile.ZipFile(zip_path, 'w') as archive:
    archive.write(FIXTURES / csv_name, arcname=name.replace('.zip', '.csv'))
  digest = checksum or hashlib.sha256(zip_path.read_bytes()).hexdigest()
  (folder / (name + '.CHECKSUM')).write_text(f'{digest}  {name}\n')
  return zip_path


def test_month_range():
  assert binance.month_range('2024-11', '2025-02') == ['2024-11', '2024-12', '2025-01', '2025-02']
  with pytest.raises(ValueError, match='before start'):
    binance.month_range('2025-02', '2024-11')
  with pytest.raises(ValueError, match='2024-01'):
    binance.month_range('last year', '2024-11')


def test_archive_url():
  url = binance.archive_url('btcusdt', '1h', '2024-12')
  assert url == ('https://data.binance.vision/data/spot/monthly/klines/BTCUSDT/1h/'
                 'BTCUSDT-1h-2024-12.zip')


def test_from_dir_merges_ms_and_us_months_and_writes_canonical_csv(tmp_path):
  _write_archive(tmp_path, '2024-12', 'BTCUSDT-1h-2024-12-tail.csv')
  _write_archive(tmp_path, '2025-01', 'BTCUSDT-1h-2025-01-head.csv')
  df = binance.download_klines('BTCUSDT', '1h', '2024-12', '2025-01', from_dir=str(tmp_path),
                               progress=lambda _: None)
  december = data.load_ohlcv(FIXTURES / 'BTCUSDT-1h-2024-12-tail.csv')
  january = data.load_ohlcv(FIXTURES / 'BTCUSDT-1h-2025-01-head.csv')
  assert len(df) == len(december) + len(january)
  assert df.index.is_monotonic_increasing
  assert str(df.index[len(december)]) == '2025-01-01 00:00:00+00:00'
  # The canonical CSV reads back to the same bars.
  out = tmp_path / 'out' / 'btc.csv'
  binance.write_canonical_csv(df, str(out))
  assert out.read_text().splitlines()[0] == 'timestamp,open,high,low,close,volume'
  back = data.load_ohlcv(out)
  np.testing.assert_allclose(back.to_numpy(), df.to_numpy(), rtol=1e-9)
  assert (back.index == df.index).all()


def test_checksum_mismatch_is_refused(tmp_path):
  _write_archive(tmp_path, '2024-12', 'BTCUSDT-1h-2024-12-tail.csv', checksum='0' * 64)
  with pytest.raises(binance.DownloadError, match='does not match the published'):
    binance.download_klines('BTCUSDT', '1h', '2024-12', '2024-12', from_dir=str(tmp_path),
                            progress=lambda _: None)


def test_missing_archive_in_from_dir(tmp_path):
  with pytest.raises(binance.DownloadError, match='not found'):
    binance.download_klines('BTCUSDT', '1h', '2024-12', '2024-12', from_dir=str(tmp_path),
                            progress=lambda _: None)


def test_corrupt_zip(tmp_path):
  name = binance.archive_name('BTCUSDT', '1h', '2024-12')
  payload = b'not a zip'
  (tmp_path / name).write_bytes(payload)
  (tmp_path / (name + '.CHECKSUM')).write_text(hashlib.sha256(payload).hexdigest())
  with pytest.raises(binance.DownloadError, match='not a valid zip'):
    binance.download_klines('BTCUSDT', '1h', '2024-12', '2024-12', from_dir=str(tmp_path),
                            progress=lambda _: None)


def test_offline_fails_with_a_clear_message():
  # Port 9 on loopback has no listener: the connection is refused at once, as offline.
  with pytest.raises(binance.DownloadError, match='--from_dir'):
    binance.download_klines('BTCUSDT', '1h', '2024-12', '2024-12', base_url='http://127.0.0.1:9',
                            timeout=5, progress=lambda _: None)


def test_download_data_cli(tmp_path):
  _write_archive(tmp_path, '2024-12', 'BTCUSDT-1h-2024-12-tail.csv')
  out = tmp_path / 'btc.csv'
  cmd = [sys.executable, str(REPO / 'launch' / 'download_data.py'), '--symbol=BTCUSDT',
         '--start=2024-12', '--end=2024-12', f'--output={out}', f'--from_dir={tmp_path}']
  subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
  assert len(data.load_ohlcv(out)) == len(data.load_ohlcv(FIXTURES / 'BTCUSDT-1h-2024-12-tail.csv'))
  offline = subprocess.run(
      cmd[:-1] + ['--base_url=http://127.0.0.1:9'], capture_output=True, text=True, cwd=REPO,
      env={**os.environ, 'PYTHONUNBUFFERED': '1'})
  assert offline.returncode != 0
  assert 'error: cannot reach' in offline.stderr
