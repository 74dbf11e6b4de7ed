"""The quickstart pipeline: train, calibrate, decide, backtest, score.

`train_and_backtest(train_config, backtest_config, workdir)` is what launch/quickstart.py
runs: it trains `train_config` into `<workdir>/train` and backtests the trained model through
`evaluate.backtest_pipeline` (calibration, decision policy, costs and sizing of
`backtest_config`, whatever they are) into `<workdir>/backtest`. `run_pipeline` runs the same
on any training and test frames (real or synthetic) and returns one flat dict of the numbers a
result is judged by (`RESULT_NAMES`). Placebo runs (launch/placebo.py) call it once on the
real files and once per synthetic market, so every run is the quickstart's pipeline.

Frames are written as CSV files into the run's folder and the configs are pointed at them,
so training and the backtest read them exactly as they read any user file. Each file is
named after the real dataset it stands for (`btc_usdt_1h_2020_2024.csv`), so the asset, and
with it the normaliser a multi-asset model picks, is the real one's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax.backtest import evaluate
from himari_jax.data import input_pipeline
from himari_jax.data import ohlcv as data_lib
from himari_jax.inference import members
from himari_jax.stats import signal_metrics
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


def train_and_backtest(train_config: ml_collections.ConfigDict,
                       backtest_config: ml_collections.ConfigDict, workdir: str, *,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains `train_config` into `<workdir>/train`, then backtests that run per
  `backtest_config` into `<workdir>/backtest` (a rerun resumes training where it stopped).

  Args:
    train_config: a `configs/flag_trader.py` config.
    backtest_config: a `configs/backtest.py` config; its `checkpoints` is replaced by this
      run's model (on a copy).
    workdir: the run's folder.
    log: where progress lines go.

  Returns:
    `evaluate.backtest_pipeline`'s outcome (metrics, benchmark, significance, attribution,
    policy, paths, sweep, warnings).
  """
  train_dir = os.path.join(workdir, TRAIN_SUBDIR)
  log(f'1/2 training {train_config.get("variant", "")} on {train_config.data.train} -> '
      f'{train_dir}')
  train.train_and_evaluate(train_config, train_dir)
  backtest_config = ml_collections.ConfigDict(backtest_config.to_dict())
  backtest_config.checkpoints = train_dir
  log(f'2/2 backtesting on {backtest_config.dataset}')
  return evaluate.backtest_pipeline(backtest_config, os.path.join(workdir, BACKTEST_SUBDIR),
                                    log=log)


def run_pipeline(train_config: ml_collections.ConfigDict,
                 backtest_config: ml_collections.ConfigDict, workdir: str, *,
                 train_frames: Mapping[str, pd.DataFrame] | None = None,
                 test_frame: tuple[str, pd.DataFrame] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """`train_and_backtest` on given frames; returns the result's numbers.

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
  outcome = train_and_backtest(train_config, backtest_config, workdir, log=log)

  # The frame the backtest ran on, as backtest_pipeline loaded it.
  test = data_lib.load_dataset(backtest_config.dataset, fill_gaps=True)
  split = outcome['attribution']['values']  # net and gross (zero-cost) of the same fills
  quality = signal_quality(os.path.join(workdir, TRAIN_SUBDIR), backtest_config, test,
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


def load_recent_frames(names: str | Sequence[str], *, fill_gaps: bool,
                       last_bars: int | None = None) -> dict[str, pd.DataFrame]:
  """name -> frame of each dataset of a comma-separated list, cut to its last `last_bars`."""
  frames = {}
  for name in config_lib.split_list(names):
    df = data_lib.load_dataset(name, fill_gaps=fill_gaps)
    frames[name] = df.iloc[-last_bars:] if last_bars else df
  return frames
