"""The backtest pipeline: checkpoints -> decisions (members.py) -> backtest -> reports.

`backtest_pipeline` is what launch/backtest.py and quickstart.py run; `backtest_and_report`
backtests given decisions against buy-and-hold, adds the significance tests (SPEC 7) and
writes every report file (walk-forward uses it on its stitched test windows).
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import backtest as backtest_lib
from himari_jax import config as config_lib
from himari_jax import constants, input_pipeline
from himari_jax import data as data_lib
from himari_jax import ensemble as ensemble_lib
from himari_jax import members as members_lib
from himari_jax import metrics as metrics_lib
from himari_jax import report as report_lib
from himari_jax import significance as significance_lib


def _weights(config: ml_collections.ConfigDict, num_members: int) -> list[float] | None:
  weights = [float(w) for w in config_lib.split_list(config.get('weights', '') or '')]
  if weights and len(weights) != num_members:
    raise ValueError(f'weights has {len(weights)} entries for {num_members} checkpoints; give '
                     'one per checkpoint or leave it empty for equal weights')
  return weights or None


def backtest_pipeline(config: ml_collections.ConfigDict, outdir: str, *,
                      sweep: bool = False, log=print) -> dict:
  """checkpoints -> predictions -> calibration -> ensemble -> backtest -> reports.

  Args:
    config: a `configs/backtest.py` config (checkpoints, dataset, strategy, calibration,
      costs and sizing, sweep grid, significance settings).
    outdir: where the reports go.
    sweep: also backtest every (strategy, confidence threshold) of `config.sweep` in one
      compiled call, write `sweep.csv`, and deflate the Sharpe ratio by that many trials.
    log: where progress lines go.

  Returns:
    {'metrics', 'benchmark', 'significance', 'paths', 'sweep' (a DataFrame or None)}.
  """
  paths = [members_lib.resolve_path(p) for p in config_lib.split_list(config.checkpoints)]
  if not paths:
    raise ValueError('no checkpoints given: set --checkpoints (or --config.checkpoints) to '
                     'one or more training workdirs or .pt files, comma-separated')
  valid = (*ensemble_lib.STRATEGIES, *config_lib.STRATEGY_ALIASES)
  swept = config_lib.split_list(config.sweep.strategies) if sweep else []
  for strategy in (config.strategy, *swept):
    if strategy not in valid:
      raise ValueError(f'unknown strategy {strategy!r}; valid: {", ".join(valid)}')
  if not 0.0 <= config.confidence_threshold <= 1.0:
    raise ValueError(f'confidence_threshold={config.confidence_threshold} must be in [0, 1]')
  backtest_lib.params_from_config(config)  # validates costs and sizing up front
  weights = _weights(config, len(paths))
  df = data_lib.load_dataset(config.dataset, fill_gaps=True)
  log(f'loading {len(paths)} model(s): {", ".join(paths)}')
  members = [members_lib.load_member(p, config.which) for p in paths]
  log(f'predicting {len(df)} bars of {config.dataset} '
      f'({df.index[0]:%Y-%m-%d} .. {df.index[-1]:%Y-%m-%d}); calibration: '
      f'{config.calibration.mode}')
  decisions = members_lib.decide(members, paths, df, strategy=config.strategy,
                     threshold=config.confidence_threshold, weights=weights,
                     calibration_config=config.calibration,
                     asset=input_pipeline.asset_name(config.dataset))

  table = None
  trial_sharpes = None
  if sweep:
    strategies = swept
    signals = [ensemble_lib.combine(decisions.probs, config_lib.strategy_name(s),
                                    weights=weights) for s in strategies]
    actions = np.stack([np.where(decisions.available, a, constants.HOLD) for a, _ in signals])
    confidence = np.stack([np.where(decisions.available, c, 0.0) for _, c in signals])
    grid = backtest_lib.make_grid(backtest_lib.settings_from_config(config),
                                  confidence_threshold=list(config.sweep.confidence_thresholds))
    table = backtest_lib.sweep(df, actions, confidence, grid, signal_names=strategies,
                               periods_per_year=config.periods_per_year,
                               risk_free_rate=config.risk_free_rate,
                               metrics=config.sweep.get('metrics', 'all'))
    os.makedirs(outdir, exist_ok=True)
    table.to_csv(os.path.join(outdir, 'sweep.csv'), index=False)
    trial_sharpes = table['sharpe'].to_numpy(float)
    log(f'sweep: {len(table)} configurations in one compiled call -> '
        f'{os.path.join(outdir, "sweep.csv")}')

  extra = {'models': paths, 'calibration': decisions.calibrations,
           'available_bars': int(decisions.available.sum())}
  outcome = backtest_and_report(df, decisions.actions, decisions.confidence, config, outdir,
                                extra=extra, trial_sharpes=trial_sharpes)
  return {**outcome, 'sweep': table}


def backtest_and_report(df: pd.DataFrame, actions: np.ndarray, confidence: np.ndarray,
                        config: ml_collections.ConfigDict, outdir: str, *,
                        extra: dict | None = None,
                        trial_sharpes: np.ndarray | None = None) -> dict:
  """Backtest of decisions, buy-and-hold, significance and every report file.

  Args:
    df: the OHLCV frame of the N bars decided on.
    actions: (N,) int actions; confidence: (N,) float in [0, 1].
    config: a `configs/backtest.py` config (costs, sizing, significance settings).
    outdir: where the reports go.
    extra: more JSON-able sections for `backtest_results.json`; `significance` is added.
    trial_sharpes: annualised Sharpe ratios of every configuration tried, for the deflated
      Sharpe ratio; None = this one only.

  Returns:
    {'metrics', 'benchmark', 'significance', 'paths'}.
  """
  params = backtest_lib.params_from_config(config)
  result = backtest_lib.run_backtest(df, actions, confidence, params)
  close = np.asarray(df['close'], np.float64)
  benchmark = backtest_lib.buy_and_hold(df, params)
  capital = params.initial_capital
  equity = np.asarray(result.equity, np.float64)
  # Exposure as set at each fill and held until the next one: the signal whose timing the
  # shuffled-signal null permutes (marking to market between fills is not a decision).
  exposure = np.asarray(result.position, np.float64) * close / np.maximum(equity, 1e-12)
  filled = np.asarray(result.fill_qty) != 0
  exposure = pd.Series(np.where(filled, exposure, np.nan)).ffill().fillna(0.0).to_numpy()
  significance = significance_lib.significance_report(
      np.asarray(metrics_lib.period_returns(result.equity, capital)),
      np.asarray(metrics_lib.period_returns(benchmark.equity, capital)),
      positions=exposure, market_returns=np.asarray(metrics_lib.market_returns(close)),
      num_resamples=config.significance.num_resamples,
      num_shuffles=config.significance.num_shuffles,
      cost_rate=(float(params.commission_buy + params.slippage_buy),
                 float(params.commission_sell + params.slippage_sell)),
      seed=config.significance.seed,
      periods_per_year=config.periods_per_year, trial_sharpes=trial_sharpes)
  written = report_lib.write_reports(outdir, result, df, actions, confidence, config,
                                     extra={**(extra or {}), 'significance': significance})
  with open(written['json']) as f:
    results = json.load(f)
  return {'metrics': results['metrics'], 'benchmark': results['benchmark']['metrics'],
          'significance': significance, 'paths': written}
