"""Downloads Binance public kline archives into the canonical OHLCV CSV.

  python launch/download_data.py --symbol=SOLUSDT --start=2023-01 --end=2024-12 \
      --output=data/sol_usdt_1h.csv

Every archive is checked against its published sha256. Offline, fetch the `.zip` and
`.zip.CHECKSUM` files elsewhere and pass `--from_dir`.
"""

from absl import flags, logging

from himari_jax import cli
from himari_jax.data import binance
from himari_jax.data import ohlcv as data

_SYMBOL = flags.DEFINE_string('symbol', 'BTCUSDT', 'Binance spot symbol, e.g. BTCUSDT.')
_INTERVAL = flags.DEFINE_string('interval', '1h', 'Kline interval.')
_START = flags.DEFINE_string('start', None, 'First month, YYYY-MM.', required=True)
_END = flags.DEFINE_string('end', None, 'Last month, YYYY-MM (must be a finished month).',
                           required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write.', required=True)
_FROM_DIR = flags.DEFINE_string('from_dir', None, 'Read archives from this folder, not the web.')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'Keep verified archives here for reuse.')
_BASE_URL = flags.DEFINE_string('base_url', binance.BASE_URL, 'Archive server.')


def main(argv):
  del argv
  df = binance.download_klines(_SYMBOL.value, _INTERVAL.value, _START.value, _END.value,
                               from_dir=_FROM_DIR.value, cache_dir=_CACHE_DIR.value,
                               base_url=_BASE_URL.value, progress=logging.info)
  gaps = data.find_gaps(df)
  binance.write_canonical_csv(df, _OUTPUT.value)
  logging.info('wrote %s: %d bars %s .. %s; gaps: %s', _OUTPUT.value, len(df), df.index[0],
               df.index[-1], gaps)


if __name__ == '__main__':
  cli.run(main)
