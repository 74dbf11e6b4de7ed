"""The quickstart pipeline as one function: train, calibrate, decide, backtest, score.

`run_pipeline(train_config, backtest_config, workdir, train=..., test=...)` is what
launch/quickstart.py does, on any training and test frames (real or synthetic) and without
printing: it trains `train_config` on the training frames, backtests the trained model on the
test frame through `evaluate.backtest_pipeline` (calibration, decision policy, costs and
sizing of `backtest_config`, whatever they are), and returns one flat dict of the numbers a
result is judged by (`RESULT_NAMES`). Placebo runs (launch/placebo.py) call it once on the
real files and once per synthetic market, so every run is the same pipeline.

Frames are written as CSV files into the run's folder and the configs are pointed at them,
so training and the backtest read them exactly as they read any user file. Each file is
named after the real dataset it stands for (`btc_usdt_1h_2020_2024.csv`), so the asset, and
with it the normaliser a multi-asset model picks, is the real one's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import evaluate, report
from himari_jax.data import input_pipeline
from himari_jax.data import ohlcv as data_lib
from himari_jax.inference import members
from himari_jax.stats import metrics, signal_metrics
from himari_jax.training import train

# The keys of `run_pipeline`'s result: net (booked) and gross (the same fills at zero cost)
# Sharpe and total return, the test PSR(0) with a HAC error, the IC and rank IC of p_buy - p_sell
# against the forward label-horizon return, turnover (traded notional / mean equity), fills,
# and buy-and-hold's Sharpe on the same bars.
RESULT_NAMES = ('net_sharpe', 'gross_sharpe', 'total_return', 'gross_total_return',
                'test_psr', 'ic', 'rank_ic', 'turnover', 'num_trades',
                'benchmark_sharpe', 'num_bars')
DATA_SUBDIR = 'data'
TRAIN_SUBDIR = 'train'
BACKTEST_SUBDIR = 'backtest'


def dataset_stem(name: str) -> str:
  """'btc_usdt_1h_2020_2024' or 'data/BTC-1h.csv' -> the file name stem ('BTC-1h')."""
  stem = os.path.basename(os.fspath(name))
  for suffix in ('.gz', '.csv'):
    stem = stem.removesuffix(suffix)
  return stem


def write_frame(df: pd.DataFrame, path: str) -> str:
  """Writes an OHLCV frame as a CSV `data.load_ohlcv` reads back bar for bar; returns `path`."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  df.to_csv(path + '.tmp', index_label='timestamp')
  os.replace(path + '.tmp', path)  # an interrupted write leaves no half file to train on
  return path


def _result_from_files(backtest_dir: str, close: np.ndarray) -> backtest_lib.BacktestResult:
  """The backtest's per-bar record, rebuilt from `backtest_results.json` and the trades CSV.

  `evaluate.backtest_pipeline` returns metrics, not the record; the record is what the
  gross-of-cost attribution needs. Equity per bar is in the JSON's curves; every fill (its
  side, quantity, price, costs and position after) is a row of the trades file; the cash
  follows as equity - position * close.
  """
  with open(os.path.join(backtest_dir, report.RESULTS_JSON)) as f:
    curves = json.load(f)['curves']
  equity = np.asarray(curves['equity'], np.float64)
  times = pd.DatetimeIndex(curves['time'])
  if len(close) != len(equity):
    raise ValueError(f'{backtest_dir}: {len(equity)} bars of equity for a test frame of '
                     f'{len(close)} bars; was the backtest run on another file?')
  trades = pd.read_csv(os.path.join(backtest_dir, report.TRADES_CSV))
  bars = times.get_indexer(pd.DatetimeIndex(trades['time']))
  if np.any(bars < 0):
    raise ValueError(f'{backtest_dir}: trade at {trades["time"][np.argmax(bars < 0)]} is not '
                     'a bar of the backtest')
  n = len(equity)
  sign = np.where(trades['side'].to_numpy() == 'BUY', 1.0, -1.0)
  fields = {name: np.zeros(n) for name in ('fill_qty', 'fill_price', 'commission', 'slippage',
                                           'confidence')}
  fields['fill_qty'][bars] = sign * trades['quantity'].to_numpy(np.float64)
  fields['fill_price'][bars] = trades['price'].to_numpy(np.float64)
  fields['commission'][bars] = trades['commission'].to_numpy(np.float64)
  fields['slippage'][bars] = trades['slippage'].to_numpy(np.float64)
  fields['confidence'][bars] = trades['confidence'].to_numpy(np.float64)
  position = np.full(n, np.nan)
  position[bars] = trades['position_after'].to_numpy(np.float64)
  position = pd.Series(position).ffill().fillna(0.0).to_numpy()
  record = {'position': position, 'cash': equity - position * close, 'equity': equity,
            **fields}
  # The backtest's own dtype (float32 unless x64 is on), which `metrics.trade_stats` scans in.
  dtype = jnp.result_type(float)
  return backtest_lib.BacktestResult(**{k: np.asarray(v, dtype) for k, v in record.items()})


def signal_quality(checkpoint_dir: str, backtest_config: ml_collections.ConfigDict,
                   test: pd.DataFrame, asset: str, horizon: int) -> dict[str, float]:
  """IC and rank IC of the calibrated `p_buy - p_sell` against the forward `horizon`-bar
  return on the test bars where the model has a prediction (`signal_metrics`)."""
  loaded = members.load_member(checkpoint_dir, backtest_config.which)
  probs, available, _ = members.member_probabilities([loaded], test,
                                                     backtest_config.calibration, asset=asset)
  signal = signal_metrics.signal(probs[0])
  forward = signal_metrics.forward_returns(test['close'].to_numpy(np.float64), horizon)
  mask = available & np.isfinite(forward)
  return {'ic': signal_metrics.information_coefficient(signal, forward, mask),
          'rank_ic': signal_metrics.rank_information_coefficient(signal, forward, mask)}


def run_pipeline(train_config: ml_collections.ConfigDict,
                 backtest_config: ml_collections.ConfigDict, workdir: str, *,
                 train_frames: Mapping[str, pd.DataFrame] | None = None,
                 test_frame: tuple[str, pd.DataFrame] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains `train_config`, backtests it per `backtest_config`, returns the result's numbers.

  Args:
    train_config: a `configs/flag_trader.py` config; its `data.train` is used when
      `train_frames` is None.
    backtest_config: a `configs/backtest.py` config; its `checkpoints` is replaced by this
      run's model, its `dataset` is used when `test_frame` is None.
    workdir: the run's folder: `data/` (the frames as CSV), `train/` (checkpoints; training
      resumes from them) and `backtest/` (reports).
    train_frames: dataset name -> OHLCV frame to train on (names as in `data.train`: they
      name the CSV files and so the assets).
    test_frame: (dataset name, OHLCV frame) to backtest on, without gaps.
    log: where progress lines go.

  Returns:
    {name: float} for every name in `RESULT_NAMES` (NaN where undefined, e.g. the Sharpe
    ratio of a run that never traded).
  """
  train_config = ml_collections.ConfigDict(train_config.to_dict())
  backtest_config = ml_collections.ConfigDict(backtest_config.to_dict())
  data_dir = os.path.join(workdir, DATA_SUBDIR)
  if train_frames is not None:
    train_config.data.train = ','.join(
        write_frame(df, os.path.join(data_dir, dataset_stem(name) + '.csv'))
        for name, df in train_frames.items())
  if test_frame is not None:
    name, test = test_frame
    backtest_config.dataset = write_frame(test, os.path.join(data_dir,
                                                             dataset_stem(name) + '.csv'))
  train_dir = os.path.join(os.path.abspath(workdir), TRAIN_SUBDIR)
  log(f'training {train_config.get("variant", "")} on {train_config.data.train}')
  train.train_and_evaluate(train_config, train_dir)
  backtest_config.checkpoints = train_dir
  backtest_dir = os.path.join(workdir, BACKTEST_SUBDIR)
  outcome = evaluate.backtest_pipeline(backtest_config, backtest_dir, log=log)

  # The frame the backtest ran on, as backtest_pipeline loaded it.
  test = data_lib.load_dataset(backtest_config.dataset, fill_gaps=True)
  close = test['close'].to_numpy(np.float64)
  record = _result_from_files(backtest_dir, close)
  params = backtest_lib.params_from_config(backtest_config)
  split = metrics.attribution(record, params.initial_capital,
                              periods_per_year=backtest_config.periods_per_year,
                              risk_free_rate=backtest_config.risk_free_rate)
  quality = signal_quality(train_dir, backtest_config, test,
                           input_pipeline.asset_name(backtest_config.dataset),
                           int(train_config.labels.horizon))
  result = {
      'net_sharpe': outcome['metrics']['sharpe'],
      'gross_sharpe': split['gross_sharpe'],
      'total_return': outcome['metrics']['total_return'],
      'gross_total_return': split['gross_total_return'],
      'test_psr': outcome['significance']['test_psr']['psr'],
      **quality,
      'turnover': outcome['metrics']['turnover'],
      'num_trades': outcome['metrics']['num_trades'],
      'benchmark_sharpe': outcome['benchmark']['sharpe'],
      'num_bars': len(test),
  }
  return {name: _as_float(result[name]) for name in RESULT_NAMES}


def _as_float(value: Any) -> float:
  return float('nan') if value is None else float(value)


def load_frames(names: str | Sequence[str], *, fill_gaps: bool,
                last_bars: int | None = None) -> dict[str, pd.DataFrame]:
  """name -> frame of each dataset of a comma-separated list, cut to its last `last_bars`."""
  frames = {}
  for name in config_lib.split_list(names):
    df = data_lib.load_dataset(name, fill_gaps=fill_gaps)
    frames[name] = df.iloc[-last_bars:] if last_bars else df
  return frames
