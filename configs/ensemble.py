"""Ensemble of trained FLAG-TRADER models: calibrate each member, combine, decide.

Each member is calibrated on the validation split of its own training run, then the members'
probabilities are combined by `himari_jax.ensemble.combine`. Override on the command line,
e.g. `--config.members=runs/a,runs/b --config.calibration.mode=fit_rates`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.members = ''  # workdirs or PyTorch .pt files, comma-separated
  config.which = 'best'  # checkpoint of each workdir: 'best' or 'latest'
  config.dataset = 'btc_usdt_1h_2025_2026'  # builtin dataset name or CSV path to decide on

  config.strategy = 'confidence_weighted'  # 'voting', 'confidence_weighted' or 'disagreement'
  config.threshold = 0.0  # BUY/SELL with confidence below this become HOLD; equal trades
  config.weights = ''  # one non-negative weight per member, comma-separated; '' = equal

  config.calibration = ml_collections.ConfigDict()
  config.calibration.mode = 'none'  # 'none', 'fixed', 'fit_rates' (label rates), 'fit_logloss'
  config.calibration.bias = (3.0, -2.5, 1.0)  # logit bias for mode 'fixed' (the seed's)
  config.calibration.temperature = False  # also fit a temperature on the validation split
  config.calibration.num_bins = 15  # confidence bins of the reported ECE
  return config
