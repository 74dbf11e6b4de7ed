"""Backtest of trained FLAG-TRADER models: checkpoints -> predictions -> ensemble -> backtest.

Defaults are the seed's backtest (SPEC section 6): long-only, BUY sized at confidence * 10 %
of equity, fills at the decision bar's close, 0.1 % commission and 0.05 % slippage. Override
on the command line, e.g. `--config.checkpoints=runs/a,runs/b --config.fill=next_open`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.checkpoints = 'checkpoints/small_a'  # workdirs or PyTorch .pt files, comma-separated
  config.which = 'best'  # checkpoint of each workdir: 'best' or 'latest'
  config.dataset = 'btc_usdt_1h_2025_2026'  # builtin dataset name or CSV path to backtest on
  config.strategy = 'voting'  # ensemble of several checkpoints (himari_jax.ensemble.STRATEGIES)
  config.weights = ''  # one non-negative weight per checkpoint, comma-separated; '' = equal
  config.confidence_threshold = 0.0  # BUY/SELL with confidence below this become HOLD

  # Logit correction of each member, fitted on the validation split of its own training run.
  config.calibration = ml_collections.ConfigDict()
  config.calibration.mode = 'fit_rates'  # 'none', 'fixed', 'fit_rates' (label rates), 'fit_logloss'
  config.calibration.bias = (3.0, -2.5, 1.0)  # logit bias for mode 'fixed' (the seed's)
  config.calibration.temperature = True  # also fit a temperature (changes confidences only)
  config.calibration.num_bins = 15  # confidence bins of the reported calibration error

  config.initial_capital = 100_000.0
  config.commission = 0.001  # fraction of traded notional
  config.slippage = 0.0005  # fraction of the reference price, against the trade
  config.commission_sell = config_dict.placeholder(float)  # None: same as commission
  config.slippage_sell = config_dict.placeholder(float)  # None: same as slippage
  config.max_position_pct = 0.10  # BUY target: confidence * this share of equity
  config.fill = 'close'  # 'close' of the decision bar (seed) or 'next_open'
  config.allow_short = False  # SELL goes short (same target size) instead of flat
  config.sizing = 'confidence'  # 'confidence' (seed), 'fixed' (max_position_pct) or 'full'
  config.periods_per_year = 8760.0  # hourly bars
  config.risk_free_rate = 0.0  # simple annual rate for Sharpe / Sortino

  config.significance = ml_collections.ConfigDict()
  config.significance.num_resamples = 2000  # block-bootstrap resamples
  config.significance.num_shuffles = 1000  # shuffled-signal null draws
  config.significance.seed = 0

  config.sweep = ml_collections.ConfigDict()
  config.sweep.confidence_thresholds = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  config.sweep.strategies = ('voting', 'confidence_weighted', 'disagreement')
  # 'all' (every metric) or 'core' (returns, Sharpe, drawdown, trades: several times faster
  # for large grids; see backtest.sweep).
  config.sweep.metrics = 'all'
  return config
