"""Every configuration the package and its launch scripts use, with their defaults.

The package never reads the repository's `configs/` folder: the defaults live here, and
`configs/*.py` are thin files that return these configs (so `--config=configs/<name>.py:<arg>`
on a launch script and `load_config('<name>:<arg>')` in Python give the same config).

Configs (name: argument):
- `default`: the base every FLAG-TRADER variant overrides.
- `flag_trader`: variants `seed` (default), `small`, `tiny` (see `flag_trader_config`).
- `backtest`: the seed's backtest settings (SPEC 6); `ensemble`: the same with two members.
- `walk_forward`: variants `small` (default), `tiny`.
- `pretrain`: an arm of `PRETRAIN_ARMS`, optionally followed by `,tiny`.

Conventions: a list of names or paths is one comma-separated string ('a,b'), split by
`split_list` (the one splitter; it also accepts a sequence); a vector of numbers (a logit
bias, a threshold grid) is a tuple, `--config.sweep.confidence_thresholds='(0.0,0.6)'` on the
command line. A field left at None means "derive it" (the embargo from the label horizon,
every bar, one full pass over the windows).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from himari_jax import constants
from himari_jax.stats import diagnostics


class ConfigError(ValueError):
  """The config cannot work; the message names the field and what to change."""


def split_list(text: str | Sequence[str] | None) -> list[str]:
  """'a, b' or ['a', 'b'] -> ['a', 'b']; None or '' -> [] (the one list splitter)."""
  if text is None:
    return []
  items = text.split(',') if isinstance(text, str) else list(text)
  return [str(item).strip() for item in items if str(item).strip()]


# Other names of ensemble strategies (himari_jax.inference.ensemble.STRATEGIES): the seed called
# `disagreement` "unanimous" (BUY / SELL only when every member agrees).
STRATEGY_ALIASES = {'unanimous': 'disagreement'}


def strategy_name(name: str) -> str:
  """The `ensemble.STRATEGIES` name of a strategy, resolving `STRATEGY_ALIASES`."""
  return STRATEGY_ALIASES.get(name, name)


# -------------------------------------------------------------------------------- ranges


# The range of every numeric field, checked before a config is used (`check_ranges`): '>= 0',
# '> 0', 'in [0, 1)' ..., with 'or None' where None means "derive it". Fields a config lacks
# (an older run's) are skipped.
TRAINING_RANGES = {
    'data.val_fraction': 'in (0, 1)', 'data.embargo': '>= 0 or None',
    'data.max_bars': '>= 1 or None', 'data.max_bar_move': '> 0',
    'labels.horizon': '>= 1', 'labels.threshold': '> 0', 'labels.k': '> 0',
    'labels.k_up': '> 0', 'labels.k_down': '> 0', 'labels.window': '>= 2',
    'labels.cost_floor': '>= 0',
    'model.state_dim': '>= 1', 'model.action_dim': '>= 2', 'model.d_model': '>= 1',
    'model.num_layers': '>= 1', 'model.num_heads': '>= 1', 'model.dim_feedforward': '>= 1',
    'model.max_length': '>= 1', 'model.dropout_rate': 'in [0, 1)',
    'model.attention_dropout': 'in [0, 1)', 'model.lora_rank': '>= 0', 'model.lora_alpha': '> 0',
    'train.context_length': '>= 1', 'train.window_stride': '>= 1', 'train.batch_size': '>= 1',
    'train.num_epochs': '>= 1', 'train.steps_per_epoch': '>= 0 or None',
    'train.learning_rate': '> 0', 'train.warmup_steps': '>= 0', 'train.weight_decay': '>= 0',
    'train.grad_clip': '>= 0', 'train.log_every_steps': '>= 1',
    'train.checkpoint_every_steps': '>= 0', 'train.keep_latest': '>= 1',
    'train.eval_batch_size': '>= 1', 'train.collapse_threshold': 'in (0, 1]',
    'train.cost_multiplier': '>= 0', 'train.turnover_penalty': '>= 0',
    'train.risk_aversion': '>= 0', 'train.reinforce_samples': '>= 2',
    'train.entropy_coef': '>= 0', 'decision.confidence_threshold': 'in [0, 1]',
}
BACKTEST_RANGES = {
    'confidence_threshold': 'in [0, 1]', 'calibration.num_bins': '>= 1',
    'initial_capital': '> 0', 'commission': 'in [0, 1)', 'slippage': 'in [0, 1)',
    'commission_sell': 'in [0, 1) or None', 'slippage_sell': 'in [0, 1) or None',
    'max_position_pct': 'in (0, 1]', 'periods_per_year': '> 0', 'risk_free_rate': '> -1',
    'max_bar_move': '> 0', 'significance.num_resamples': '>= 1',
    'significance.num_shuffles': '>= 1', 'policy.entry': 'in [-1, 1]',
    'policy.exit': 'in [-1, 1]', 'policy.min_hold': '>= 0', 'policy.cooldown': '>= 0',
    'policy.max_position_pct': 'in (0, 1]', 'policy.target_vol': '> 0',
    'policy.max_leverage': '> 0', 'policy.band': '>= 0', 'policy.turnover_penalty': '>= 0',
    'policy.vol_window': '>= 2', 'policy.nested_windows': '>= 1',
}
WALK_FORWARD_RANGES = {'train_bars': '>= 1', 'test_bars': '>= 1', 'step_bars': '>= 1 or None',
                       'embargo': '>= 0 or None'}
_BOUND = re.compile(r'(>=|>) (\S+)|in ([\[(])(\S+), (\S+)([\])])')


def _within(value: float, rule: str) -> bool:
  """Whether `value` satisfies a range rule of `TRAINING_RANGES` (without 'or None')."""
  match = _BOUND.fullmatch(rule)
  if match is None:
    raise ValueError(f'unknown range rule {rule!r}')
  op, bound, left, low, high, right = match.groups()
  if op:
    return value >= float(bound) if op == '>=' else value > float(bound)
  above = value >= float(low) if left == '[' else value > float(low)
  below = value <= float(high) if right == ']' else value < float(high)
  return above and below


def check_ranges(config: ml_collections.ConfigDict, ranges: dict[str, str], *,
                 prefix: str = '--config.') -> None:
  """Refuses a numeric field outside its range (`TRAINING_RANGES`, `BACKTEST_RANGES`).

  Args:
    config: the config; a field it lacks is skipped.
    ranges: dotted field path -> rule.
    prefix: how the command line names `config` ('--config.', '--config.backtest.').

  Raises:
    ConfigError: one line naming the flag, its value and the range, e.g.
      `--config.train.warmup_steps=-1: must be >= 0`.
  """
  for path, rule in ranges.items():
    node, names = config, path.split('.')
    for name in names:
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        break
      node = node[name]
    else:
      bound, _, none_ok = rule.partition(' or ')
      if node is None and none_ok:
        continue
      number = isinstance(node, int | float) and not isinstance(node, bool)
      if not (number and math.isfinite(node) and _within(node, bound)):
        raise ConfigError(f'{prefix}{path}={node}: must be {rule}')


# ------------------------------------------------------------------------------ training


def default_config() -> ml_collections.ConfigDict:
  """Base configuration shared by every FLAG-TRADER variant (the seed's sizes)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # Builtin names or CSV paths, comma-separated, or universe:PATH[@SYM1,SYM2] (a folder or
  # glob of OHLCV files, one asset per coin; input_pipeline.parse_universe).
  config.data.train = 'btc_usdt_1h_2020_2024'
  config.data.test = 'btc_usdt_1h_2025_2026'  # out-of-sample era for backtests
  config.data.val_fraction = 0.15  # last share of the training bars held out for validation
  config.data.embargo = config_dict.placeholder(int)  # bars between splits; None = label horizon
  config.data.fill_gaps = True  # forward-fill missing hours with zero-volume bars
  config.data.max_bars = config_dict.placeholder(int)  # last N bars of each file; None = all
  config.data.feature_set = 'himari'  # 'himari', 'seed_causal' or 'seed_exact' (SPEC 3)
  config.data.allow_lookahead = False  # True only to reproduce the seed with seed_exact
  config.data.max_bar_move = 0.5  # a bar's |close / previous close - 1| above this is reported
  config.data.refuse_large_moves = False  # True: refuse such a bar instead of warning
  # 'rows' (the last val_fraction of each file's bars) or 'time' (one calendar cut for every
  # file); None = 'time' for a universe:PATH training set, else 'rows'.
  config.data.split = config_dict.placeholder(str)

  config.labels = ml_collections.ConfigDict()
  # 'threshold', 'sharpe', 'volatility' or 'triple_barrier' (SPEC 4); each rule reads only
  # its own fields (input_pipeline.label_params).
  config.labels.kind = 'threshold'
  config.labels.horizon = 6  # bars ahead (threshold, volatility, triple_barrier)
  config.labels.threshold = 0.01  # |return| that makes a BUY / SELL (threshold rule)
  config.labels.k = 1.0  # volatility rule: band = k * sigma_t * sqrt(horizon)
  config.labels.k_up = 1.0  # triple_barrier: upper barrier k_up * sigma_t * sqrt(horizon)
  config.labels.k_down = 1.0  # triple_barrier: lower barrier k_down * sigma_t * sqrt(horizon)
  config.labels.window = 168  # bars of the rolling sigma_t (volatility, triple_barrier)
  # Smallest move labelled BUY / SELL, every rule; labels.round_trip_cost() (0.003) is the
  # seed's costs of one round trip.
  config.labels.cost_floor = 0.0

  config.model = ml_collections.ConfigDict()
  config.model.state_dim = 60
  config.model.action_dim = constants.NUM_ACTIONS
  config.model.d_model = 768
  config.model.num_layers = 12
  config.model.num_heads = 8
  config.model.dim_feedforward = 3072
  config.model.max_length = 256  # rows of the positional table
  config.model.dropout_rate = 0.1
  config.model.attention_dropout = 0.1  # on attention probabilities; 0.0 takes the fused path
  config.model.attention_implementation = config_dict.placeholder(str)  # None, 'xla', 'cudnn'
  config.model.remat = False  # recompute each block in the backward pass (long contexts)
  config.model.lora_rank = 16
  config.model.lora_alpha = 16.0
  config.model.lora_targets = 'q_proj,k_proj,v_proj,out_proj,ffn_1,ffn_2'  # with adapters
  config.model.freeze_base = True  # False trains every weight (pre-training, full fine-tuning)
  config.model.causal = True  # causal attention mask; False reproduces the original (no mask)
  config.model.dtype = 'float32'  # compute dtype; 'bfloat16' on GPUs

  config.train = ml_collections.ConfigDict()
  config.train.context_length = 1  # T: bars the transformer sees per window (seed: 1)
  config.train.window_stride = 1  # bars between consecutive training windows
  config.train.batch_size = 64  # global batch, split across all devices
  config.train.num_epochs = 10
  config.train.steps_per_epoch = config_dict.placeholder(int)  # None = one full pass
  config.train.learning_rate = 1e-4
  config.train.warmup_steps = 0
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0
  config.train.class_weights = 'fixed'  # 'fixed', 'inverse', 'sqrt' or 'none'
  # 'windows' (every training window equally likely) or 'assets' (every asset equally often);
  # None = 'assets' for a universe:PATH training set, else 'windows'.
  config.train.sampling = config_dict.placeholder(str)
  config.train.best_metric = 'val_loss'  # checkpoint kept as "best"; '-val_accuracy' style for max
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500  # also checkpoint mid-epoch (pre-emption); 0 = off
  config.train.keep_latest = 2  # latest checkpoints kept besides the best one
  config.train.eval_batch_size = 512  # windows per validation batch (global)
  config.train.collapse_threshold = diagnostics.COLLAPSE_THRESHOLD  # warn above this share
  config.train.init_from = ''  # checkpoint dir or PyTorch .pt to start from (fine-tuning)
  config.train.fresh_adapters = False  # with init_from: merge its adapters, start new ones
  # What the loss optimises (himari_jax.model.objectives): 'classification' (weighted cross-entropy
  # on the labels), a position in [-1, 1] trained on its net-of-cost 'sharpe' ratio or
  # mean-variance 'utility', or a SELL / HOLD / BUY policy trained by 'reinforce' on the same
  # net return (FLAG-Trader's policy gradient); the fields below apply to these three only.
  config.train.objective = 'classification'
  config.train.cost_multiplier = 1.0  # scales commission + slippage (0.15 % per unit traded)
  config.train.turnover_penalty = 0.0  # weight of the mean |position change| per bar
  config.train.risk_aversion = 1.0  # variance weight of 'utility' (annual units)
  config.train.long_only = False  # positions in [0, 1] (sigmoid) instead of [-1, 1] (tanh)
  config.train.reinforce_samples = 4  # 'reinforce': plays of each window per step (>= 2)
  config.train.entropy_coef = 0.01  # 'reinforce': weight of the policy-entropy bonus

  config.decision = ml_collections.ConfigDict()
  config.decision.logit_bias = (0.0, 0.0, 0.0)  # added to logits before softmax
  config.decision.confidence_threshold = 0.0  # BUY/SELL below this confidence become HOLD
  return config


def _small_sizes(config: ml_collections.ConfigDict) -> None:
  """A context-32 model that trains on two CPU cores in minutes (small, pretrain budget)."""
  config.model.update(d_model=64, num_layers=2, num_heads=4, dim_feedforward=256,
                      max_length=64, lora_rank=8)
  config.train.update(context_length=32, window_stride=8, batch_size=32, num_epochs=4,
                      steps_per_epoch=300, learning_rate=1e-3, warmup_steps=50)


def _tiny_sizes(config: ml_collections.ConfigDict) -> None:
  """Seconds on one CPU core: the sizes of every test config."""
  config.model.update(d_model=16, num_layers=1, num_heads=2, dim_feedforward=32,
                      max_length=16, lora_rank=4)
  config.train.update(context_length=8, window_stride=4, batch_size=8, learning_rate=3e-3,
                      eval_batch_size=256)


def _seed(config: ml_collections.ConfigDict) -> None:
  config.decision.logit_bias = constants.SEED_LOGIT_BIAS


def _seed_long(config: ml_collections.ConfigDict) -> None:
  """The seed sizes at T = 256, batch 64: remat on, fused attention, bf16 compute."""
  config.model.update(remat=True, attention_dropout=0.0, dtype='bfloat16')
  config.train.update(context_length=256, batch_size=64)


def _small(config: ml_collections.ConfigDict) -> None:
  _small_sizes(config)
  config.train.checkpoint_every_steps = 100


def _tiny(config: ml_collections.ConfigDict) -> None:
  config.data.max_bars = 3000
  _tiny_sizes(config)
  config.train.update(num_epochs=2, steps_per_epoch=20, log_every_steps=5,
                      checkpoint_every_steps=10)


FLAG_TRADER_VARIANTS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    'seed': _seed, 'seed_long': _seed_long, 'small': _small, 'tiny': _tiny}


def flag_trader_config(variant: str | None = 'seed') -> ml_collections.ConfigDict:
  """`default_config()` with a variant's overrides.

  - `seed`: the 88M-parameter seed model and its exact hyper-parameters (T = 1, batch 64,
    lr 1e-4, 10 epochs, fixed class weights) with the seed's logit bias.
  - `seed_long`: the seed sizes at T = 256, batch 64 (remat, fused attention, bf16) for a GPU.
  - `small`: a context-32 model that trains on the bundled BTC 2020-2024 bars on two CPU
    cores in a few minutes.
  - `tiny`: for tests; seconds on one CPU core.
  """
  variant = variant or 'seed'
  if variant not in FLAG_TRADER_VARIANTS:
    raise ValueError(f'unknown config variant {variant!r}; valid variants: '
                     f'{", ".join(FLAG_TRADER_VARIANTS)} (e.g. '
                     '--config=configs/flag_trader.py:small)')
  config = default_config()
  FLAG_TRADER_VARIANTS[variant](config)
  config.variant = variant
  return config


def upgrade_saved_config(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config of a saved run (its checkpoints' `meta['config']`) in today's form.

  Every field of `default_config()` the run predates is filled with its default, which is
  how the code behaved before the field existed: feature set 'himari' without look-ahead,
  objective 'classification' (not long-only), no `init_from` or fresh adapters, no label
  cost floor, and the checkpoint, validation-batch and collapse settings of that time;
  a missing `model.attention_dropout` keeps the explicit-softmax attention the run was
  trained with (0.1; dropout is off at inference). An `data.embargo` of -1 (before None
  meant "the label horizon") becomes None. Fields the run has are kept as saved; fields
  `default_config()` lacks (a variant name, a rule's own label parameters) too.

  Args:
    saved: the saved config, a dict (JSON) or a ConfigDict.

  Returns:
    A new ConfigDict; `saved` is not changed.
  """
  config = ml_collections.ConfigDict(
      saved.to_dict() if isinstance(saved, ml_collections.ConfigDict) else dict(saved))
  _fill_missing(config, default_config())
  if config.data.embargo is not None and config.data.embargo < 0:
    config.data.embargo = None
  return config


def _fill_missing(config: ml_collections.ConfigDict,
                  defaults: ml_collections.ConfigDict) -> None:
  for name, value in defaults.items():
    if name not in config:
      config[name] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        config[name], ml_collections.ConfigDict):
      _fill_missing(config[name], value)


# ------------------------------------------------------------------------------ backtest


def backtest_config() -> ml_collections.ConfigDict:
  """The seed's backtest (SPEC 6): long-only, BUY sized at confidence * 10 % of equity, fills
  at the decision bar's close, 0.1 % commission and 0.05 % slippage."""
  config = ml_collections.ConfigDict()
  config.checkpoints = 'checkpoints/small_a'  # workdirs or PyTorch .pt files, comma-separated
  config.which = 'best'  # checkpoint of each workdir: 'best' or 'latest'
  config.dataset = 'btc_usdt_1h_2025_2026'  # builtin dataset name or CSV path to backtest on
  config.strategy = 'voting'  # ensemble of several checkpoints (inference.ensemble.STRATEGIES)
  config.weights = ''  # one non-negative weight per checkpoint, comma-separated; '' = equal
  config.confidence_threshold = 0.0  # BUY/SELL with confidence below this become HOLD
  # Backtest bars a member trained or validated on: refused unless True (then flagged first).
  config.allow_in_sample = False
  # Windows per compiled inference call. Paper trading scores each bar in a batch of this
  # size too: other batch shapes round differently, and its decisions must be the backtest's.
  config.predict_batch_size = 512

  # Logit correction of each member, fitted on the validation split of its own training run.
  config.calibration = ml_collections.ConfigDict()
  config.calibration.mode = 'fit_rates'  # 'none', 'fixed', 'fit_rates' (label rates), 'fit_logloss'
  config.calibration.bias = constants.SEED_LOGIT_BIAS  # logit bias for mode 'fixed'
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
  config.periods_per_year = constants.PERIODS_PER_YEAR  # must match the bars' interval
  config.max_bar_move = 0.5  # a bar's |close / previous close - 1| above this is reported
  config.refuse_large_moves = False  # True: refuse such a bar instead of warning
  config.risk_free_rate = 0.0  # simple annual rate for Sharpe / Sortino

  config.significance = ml_collections.ConfigDict()
  config.significance.num_resamples = 2000  # block-bootstrap resamples
  config.significance.num_shuffles = 1000  # shuffled-signal null draws
  config.significance.seed = 0
  # Bootstrap block length in bars; None = chosen from the returns (Politis-White 2004 with
  # the Patton-Politis-White 2009 correction).
  config.significance.block_length = config_dict.placeholder(float)

  # Decision policy (SPEC 8): how calibrated probabilities become positions.
  config.policy = ml_collections.ConfigDict()
  # 'seed': argmax + confidence_threshold through the backtester (the seed's decisions);
  # 'fixed': the policy of the fields below; 'select': the best policy of the grid below on
  # each run's validation split (never test bars), by `objective`; 'auto' (quickstart):
  # 'select' if its choice beats the seed rule on validation by more than the selection
  # null's 95th percentile of that margin (policy_search.auto_decision), else 'seed'; in
  # walk-forward also 'seed' once the selected policy trailed the seed rule on the earlier
  # folds' test windows (policy_search.auto_track_record).
  config.policy.mode = 'seed'
  config.policy.signal = 'margin'  # 'margin' (p_buy - p_sell) or 'argmax' (the seed's rule)
  config.policy.entry = 0.2  # enter when the signal exceeds this
  config.policy.exit = 0.0  # leave when it falls below this (<= entry: hysteresis)
  config.policy.min_hold = 0  # bars a position is held at least
  config.policy.cooldown = 0  # bars after an exit without a new entry
  config.policy.sizing = 'confidence'  # 'confidence', 'fixed' or 'vol_target'
  config.policy.max_position_pct = 0.10  # share of equity ('confidence' scales it)
  config.policy.target_vol = 0.05  # annualised volatility target ('vol_target')
  config.policy.max_leverage = 0.10  # cap of the 'vol_target' fraction of equity
  config.policy.band = 0.01  # trade only if the target moves by more than this share of equity
  config.policy.allow_short = False
  config.policy.trim = True  # a confirmation may also reduce the position
  # 'sharpe_lcb' (the net Sharpe's one-sided 95 % lower bound with its HAC error: noisier
  # policies rank lower), 'sharpe' (net) or 'sharpe_minus_turnover'.
  config.policy.objective = 'sharpe_lcb'
  config.policy.min_round_trips = 20  # validation round trips a policy needs to be chosen
  # Nested selection: the validation bars split into this many consecutive, equal windows;
  # the policy with the best worst-window objective wins among those eligible on every window
  # (ceil(min_round_trips / windows) round trips in each), and 'auto' judges the seed rule and
  # the selection null by the same rule (policy.select_policy). 1: the objective on all
  # validation bars as one (flat selection).
  config.policy.nested_windows = 3
  config.policy.turnover_penalty = 0.0  # Sharpe units per 1x equity traded a year
  config.policy.vol_window = 168  # bars of the volatility that 'vol_target' sizes by
  # The search's own null (SPEC 11): the selection rerun on the validation probabilities
  # rotated in time by this many random offsets (0: not run), each at least min_offset bars.
  config.policy.null_rotations = 40
  config.policy.null_min_offset = 336
  # The grid of 'select': policy.default_grid() (484 policies, the seed at four thresholds
  # among them) or any subset of it, as comma-separated values per axis; '' = the default.
  config.policy.grid = ml_collections.ConfigDict()
  config.policy.grid.entry = ''
  config.policy.grid.exit_gap = ''  # exit = entry - gap
  config.policy.grid.min_hold = ''
  config.policy.grid.cooldown = ''
  config.policy.grid.sizing = ''

  config.sweep = ml_collections.ConfigDict()
  config.sweep.confidence_thresholds = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  config.sweep.strategies = 'voting,confidence_weighted,disagreement'
  # 'all' (every metric) or 'core' (returns, Sharpe, drawdown, trades: several times faster
  # for large grids; see backtest.sweep).
  config.sweep.metrics = 'all'
  return config


def ensemble_config() -> ml_collections.ConfigDict:
  """`backtest_config()` with the shipped two-member ensemble voting."""
  config = backtest_config()
  config.checkpoints = 'checkpoints/small_a,checkpoints/small_b'
  return config


# --------------------------------------------------------------------------- walk-forward


WALK_FORWARD_VARIANTS = ('small', 'tiny')


def walk_forward_config(variant: str | None = 'small') -> ml_collections.ConfigDict:
  """Walk-forward folds with the model and training of `flag_trader_config(variant)`.

  Every fold trains on its own window of one asset's bars (all bundled eras of `asset`,
  concatenated) and is tested on the bars that follow, `embargo` bars later; the test
  windows are backtested as one series with the settings of `config.backtest`.
  """
  variant = variant or 'small'
  if variant not in WALK_FORWARD_VARIANTS:
    raise ValueError(f'unknown walk-forward variant {variant!r}; valid: '
                     f'{", ".join(WALK_FORWARD_VARIANTS)}')
  config = flag_trader_config(variant)
  config.asset = 'btc'  # every bundled era of this asset, concatenated in time
  config.datasets = ''  # or comma-separated builtin names / CSV paths, oldest first
  config.test_start = '2025-01-01'  # first test bar; '' = earliest with a full training window
  config.test_end = ''  # bars from this date on are not tested; '' = to the end of the data
  config.train_bars = constants.BARS_PER_YEAR  # bars of each training window, validation included
  config.test_bars = 2820  # bars of each test window (~4 months: 4 folds to 2026-04-15)
  config.step_bars = config_dict.placeholder(int)  # bars between test starts; None = test_bars
  config.mode = 'rolling'  # 'rolling' window or 'expanding' from the first fold's start
  config.embargo = config_dict.placeholder(int)  # train | val | test gap; None = label horizon
  config.per_fold = 'retrain'  # 'retrain' from scratch or 'finetune' the previous fold's run
  config.data.embargo = config.get_ref('embargo')
  config.data.train = ''  # set per fold: the fold's training file
  config.data.test = ''  # unused: every fold tests on the bars after its training window
  config.data.max_bars = None  # a fold trains on its whole file

  # Calibration, decision threshold, costs, sizing and significance of the backtests.
  config.backtest = backtest_config()
  config.backtest.checkpoints = ''  # unused: the folds' runs
  config.backtest.dataset = ''  # unused: the folds' test windows
  # The decision policy, also settable as --config.policy.*: one object under two names.
  config.policy = config.backtest.policy

  if variant == 'tiny':
    config.test_start = '2025-06-01'
    config.test_end = '2025-06-21'  # two folds
    config.train_bars = 1200
    config.test_bars = 240
    config.train.update(num_epochs=1, steps_per_epoch=6, checkpoint_every_steps=0)
    config.backtest.significance.update(num_resamples=200, num_shuffles=100)
  return config


# ---------------------------------------------------------------------------- pretraining


PRETRAIN_DATA = 'btc_usdt_1h_2017_2019,eth_usdt_1h_2017_2019,eth_usdt_1h_2020_2024'
FINETUNE_DATA = 'btc_usdt_1h_2020_2024'
PRETRAIN_ARMS = ('pretrain', 'finetune', 'full_finetune', 'scratch_lora')


def pretrain_config(arg: str | None = 'pretrain') -> ml_collections.ConfigDict:
  """Pre-training then LoRA: `arg` is an arm of `PRETRAIN_ARMS`, optionally with `,tiny`.

  - `pretrain`: the whole transformer trained (no adapters) on BTC 2017-2019, ETH 2017-2019
    and ETH 2020-2024: a multi-asset, multi-era supervised base.
  - `finetune`: LoRA on BTC 2020-2024 on the frozen pre-trained base (set
    `train.init_from`); `fresh_adapters` starts new adapters (`lora_B = 0`).
  - `full_finetune`: every weight trained on BTC 2020-2024 from the same pre-trained run.
  - `scratch_lora`: the seed's recipe: LoRA on a randomly initialised, frozen base.

  The fine-tuning arms share one budget (data, sizes, steps, batch, optimiser, schedule).
  """
  parts = split_list(arg or 'pretrain')
  arm, switches = parts[0], set(parts[1:])
  if arm not in PRETRAIN_ARMS or switches - {'tiny'}:
    raise ValueError(f'unknown config argument {arg!r}; use one of {", ".join(PRETRAIN_ARMS)}, '
                     'optionally followed by ",tiny" (e.g. configs/pretrain.py:finetune,tiny)')
  config = default_config()
  config.train.keep_latest = 1  # runs of minutes: the best and the last step suffice
  config.train.fresh_adapters = arm != 'pretrain'
  _small_sizes(config)
  config.train.update(class_weights='sqrt', log_every_steps=100, checkpoint_every_steps=0)

  pretrained = arm == 'pretrain'
  config.data.train = PRETRAIN_DATA if pretrained else FINETUNE_DATA
  # Pre-training and full fine-tuning train a plain transformer; LoRA arms add adapters.
  lora = arm in ('finetune', 'scratch_lora')
  config.model.lora_targets = default_config().model.lora_targets if lora else ''
  config.model.freeze_base = lora
  if pretrained:
    config.train.num_epochs = 8  # three files: about twice the fine-tuning windows

  if 'tiny' in switches:
    config.data.max_bars = 1500
    _tiny_sizes(config)
    config.train.update(num_epochs=1, steps_per_epoch=4, warmup_steps=0, log_every_steps=2)
  config.arm = arm
  return config


# -------------------------------------------------------------------------------- loading


# ------------------------------------------------------------------------------ placebo


PLACEBO_VARIANTS = ('quickstart', 'tiny')


def placebo_config(variant: str | None = 'quickstart') -> ml_collections.ConfigDict:
  """Placebo runs of a pipeline (launch/placebo.py).

  - `quickstart`: the quickstart pipeline: the `small` model trained on BTC/USDT 1h 2020-2024,
    calibrated and backtested on BTC/USDT 1h 2025-2026 with `backtest_config()`.
  - `tiny`: the `tiny` model on the last 3000 training bars and the last 1000 test bars, with
    few significance resamples: seconds per run, for tests.

  Fields: `train` (a flag_trader config), `backtest` (its `checkpoints` is set per run, its
  `dataset` is the test file), `placebo` (how markets are made: `synthetic.make_markets`
  options, the first market seed and the cuts of the real files).
  """
  variant = variant or 'quickstart'
  if variant not in PLACEBO_VARIANTS:
    raise ValueError(f'unknown placebo variant {variant!r}; valid variants: '
                     f'{", ".join(PLACEBO_VARIANTS)} (e.g. --config=configs/placebo.py:quickstart)')
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.train = flag_trader_config('small' if variant == 'quickstart' else 'tiny')
  config.backtest = backtest_config()
  config.backtest.dataset = config.train.data.test

  config.placebo = ml_collections.ConfigDict()
  # synthetic.MARKET_KINDS: 'iid', 'block' (volatility clustering) or 'era' (each market from
  # its own file in month-long blocks at the bars' hour of the week: the era's drift and
  # volatility, and its |r| autocorrelation at a day and a week). 'era' is the default: the
  # real run is then a draw from the null (docs/research.md, "Placebo runs").
  config.placebo.method = 'era'
  config.placebo.mean_block_length = 24.0  # bars, for 'block'
  config.placebo.remove_drift = False  # True: no trend for a long-only model to earn
  config.placebo.first_seed = 0  # market seed of placebo run 0; run i uses first_seed + i
  # Last N bars of each real file, for the real run and the markets alike; None = all.
  config.placebo.train_bars = config_dict.placeholder(int)
  config.placebo.test_bars = config_dict.placeholder(int)

  if variant == 'tiny':
    config.placebo.train_bars = 3000
    config.placebo.test_bars = 1000
    config.backtest.significance.num_resamples = 100
    config.backtest.significance.num_shuffles = 50
  return config


BENCHMARK_VARIANTS = ('cpu', 'gpu', 'tiny', 'universe_smoke', 'universe_cpu', 'universe_gpu')
UNIVERSE_BENCHMARK_VARIANTS = ('universe_smoke', 'universe_cpu', 'universe_gpu')


def benchmark_config(variant: str | None = 'cpu') -> ml_collections.ConfigDict:
  """The benchmark of `configs/benchmark.py:<variant>`.

  - `cpu`: bundled BTC and ETH, three 4-month test folds of 2024 each after a year of
    training, every baseline and a `small`-sized FLAG-TRADER with a short training budget,
    3 seeds; sized to finish in about half an hour on two CPU cores.
    `mlp_sharpe` and `flag_trader_sharpe` are the `mlp` and `flag_trader` networks trained on
    the net-of-cost Sharpe ratio; `flag_trader_reinforce` (not run unless named in
    `models`) is `flag_trader` trained by REINFORCE.
  - `gpu`: `cpu` plus the seed-sized FLAG-TRADER (88M) at T = 1 and at T = 64.
  - `tiny`: for tests; two short folds, a rule model and logistic regression, seconds.
  """
  variant = variant or 'cpu'
  if variant not in BENCHMARK_VARIANTS:
    raise ValueError(f'unknown benchmark variant {variant!r}; '
                     f'valid: {", ".join(BENCHMARK_VARIANTS)}')
  if variant in UNIVERSE_BENCHMARK_VARIANTS:
    return universe_benchmark_config(variant)
  config = ml_collections.ConfigDict()
  config.variant = variant
  # Bundled asset names ('btc': every bundled era, concatenated), bundled dataset names or
  # CSV paths; comma-separated; several files of one asset joined with '+', oldest first.
  config.assets = 'btc,eth'
  config.models = ('label_prior,buy_and_hold,momentum,logistic,lightgbm,mlp,mlp_sharpe,'
                   'flag_trader')
  config.num_seeds = 3  # seeds 0 .. num_seeds - 1 of every learned model

  config.folds = ml_collections.ConfigDict()
  config.folds.test_start = '2024-01-01'  # both bundled assets cover 2024
  config.folds.test_end = '2025-01-01'
  config.folds.train_bars = constants.BARS_PER_YEAR  # before each test window, validation included
  config.folds.test_bars = 2928  # 4 months: 3 folds cover 2024
  config.folds.step_bars = 0  # 0 = test_bars (the test windows tile the test era)
  config.folds.mode = 'rolling'

  config.data = ml_collections.ConfigDict()
  config.data.val_fraction = 0.15
  config.data.embargo = ml_collections.config_dict.placeholder(int)  # None = label horizon
  config.labels = default_config().labels

  # Per-model settings (baselines.make_baseline fields); `seed` is set per trial.
  config.baselines = ml_collections.ConfigDict()
  config.baselines.momentum = {'lookback': 24}
  config.baselines.logistic = {'steps': 300}
  config.baselines.mlp = {'hidden': (64,), 'context_length': 4, 'steps': 400}
  # The same network as `mlp`; costs and long-only come from config.backtest per trial.
  config.baselines.mlp_sharpe = {'hidden': (64,), 'context_length': 4, 'steps': 400}
  config.baselines.lightgbm = {'num_boost_round': 100}

  # FLAG-TRADER models: name -> training config (`train.train_and_evaluate`); data, labels,
  # split and seed are set per fold.
  config.flag_traders = ml_collections.ConfigDict()
  small = flag_trader_config('small')
  small.train.update(num_epochs=2, steps_per_epoch=100, warmup_steps=20,
                     checkpoint_every_steps=0, keep_latest=1, log_every_steps=100)
  config.flag_traders.flag_trader = small
  config.flag_traders.flag_trader_sharpe = sharpe_variant(small)
  config.models += ',flag_trader_sharpe'
  # Not in `models` by default: --config.models=...,flag_trader_reinforce adds it.
  config.flag_traders.flag_trader_reinforce = reinforce_variant(small)

  config.backtest = backtest_config()  # costs, sizing cap, calibration
  config.policy = ml_collections.ConfigDict()
  config.policy.entries = (0.1, 0.2, 0.3)
  config.policy.exit_gaps = (0.0, 0.1)  # exit = entry - gap
  config.policy.min_holds = (0, 24)
  config.policy.sizings = ('confidence', 'fixed')
  config.policy.band = 0.01
  config.policy.seed_thresholds = (0.0,)  # the seed policy stays a candidate
  config.policy.objective = 'sharpe'

  config.significance = ml_collections.ConfigDict()
  config.significance.num_resamples = 1000
  config.significance.seed = 0
  config.plots = True

  if variant == 'gpu':
    for name, context in (('flag_trader_seed_t1', 1), ('flag_trader_seed_t64', 64)):
      seed = flag_trader_config('seed')
      seed.train.update(context_length=context, checkpoint_every_steps=0, keep_latest=1,
                        num_epochs=3, steps_per_epoch=400, log_every_steps=100)
      seed.model.dtype = 'bfloat16'
      if context > 1:
        seed.train.window_stride = 8
      config.flag_traders[name] = seed
    config.models += ',flag_trader_seed_t1,flag_trader_seed_t64'
  elif variant == 'tiny':
    config.assets = 'btc'
    config.models = 'momentum,logistic'
    config.num_seeds = 2
    config.folds.update(test_start='2025-06-01', test_end='2025-06-21', train_bars=1200,
                        test_bars=240)
    config.baselines.logistic = {'steps': 30}
    config.baselines.mlp = {'hidden': (8,), 'context_length': 2, 'steps': 30}
    config.baselines.mlp_sharpe = {'hidden': (8,), 'context_length': 2, 'steps': 30,
                                   'batch_size': 8, 'window': 32}
    config.baselines.lightgbm = {'num_boost_round': 5, 'min_data_in_leaf': 20}
    tiny = flag_trader_config('tiny')
    tiny.train.update(num_epochs=1, steps_per_epoch=4, checkpoint_every_steps=0, keep_latest=1)
    config.flag_traders.flag_trader = tiny
    config.flag_traders.flag_trader_sharpe = sharpe_variant(tiny)
    config.flag_traders.flag_trader_reinforce = reinforce_variant(tiny)
    config.policy.update(entries=(0.1, 0.3), exit_gaps=(0.0,), min_holds=(0,),
                         sizings=('fixed',))
    config.significance.num_resamples = 100
    config.plots = False
  return config


def universe_benchmark_config(variant: str = 'universe_cpu') -> ml_collections.ConfigDict:
  """The walk-forward benchmark on a universe of coins (research/universe_benchmark.py).

  Quarterly test folds from `folds.test_start`, each model trained on the preceding
  `folds.train_months` of every coin listed then (pooled, one normaliser per coin), scoring
  every coin: cross-sectional IC, a per-coin timing portfolio and a long-short top-k
  portfolio net of costs.

  - `universe_cpu`: the 20-coin universe, 2019-01 .. 2022-09 (15 folds); the rules, the
    label prior, buy-and-hold, logistic, MLP, LightGBM (where installed) and a pooled
    `small` FLAG-TRADER (`flag_traders.flag_trader`), each learned model with market context
    ('himari_market') and without ('@himari'), 2 seeds; about an hour on two CPU cores.
  - `universe_gpu`: `universe_cpu` with a bigger MLP, 3 seeds and the seed-sized FLAG-TRADER
    at T = 64 trained longer, for a GPU box.
  - `universe_smoke`: 5 coins, 2 folds, 1 seed, every kind of model once (FLAG-TRADER
    trained briefly); about two minutes on two CPU cores.
  """
  if variant not in UNIVERSE_BENCHMARK_VARIANTS:
    raise ValueError(f'unknown universe benchmark variant {variant!r}; valid: '
                     f'{", ".join(UNIVERSE_BENCHMARK_VARIANTS)}')
  config = ml_collections.ConfigDict()
  config.variant = variant
  # A learned model reads `data.feature_set`, or the feature set after '@': 'himari' is the
  # same model without the market context (the report tests the difference).
  config.models = ('label_prior,buy_and_hold,reversal,momentum,logistic,mlp,lightgbm,'
                   'flag_trader,logistic@himari,mlp@himari,lightgbm@himari,flag_trader@himari')
  config.num_seeds = 2  # seeds 0 .. num_seeds - 1 of every learned model

  config.data = ml_collections.ConfigDict()
  config.data.universe = 'data/universe'  # folder (or glob) of the coins' OHLCV files
  config.data.symbols = ''  # comma-separated coins to use; '' = every file's
  config.data.btc = 'BTC'  # the coin standing for the market (market features, benchmark)
  config.data.feature_set = 'himari_market'
  config.data.val_fraction = 0.15  # of each training window, one calendar cut for every coin
  config.data.embargo = config_dict.placeholder(int)  # None = label horizon
  config.labels = default_config().labels

  config.folds = ml_collections.ConfigDict()
  config.folds.test_start = '2019-01-01'  # first test bar
  config.folds.test_end = '2022-10-01'  # bars from here on are not tested
  config.folds.test_months = 3
  config.folds.train_months = 12  # before each test window (validation and embargo included)
  config.folds.min_listed = 0.5  # a coin enters a fold with bars on this share of its training
  config.folds.max_folds = 0  # 0 = every fold

  config.baselines = ml_collections.ConfigDict()
  config.baselines.lookback = 24  # bars of the reversal and momentum rules' trailing return
  config.baselines.logistic = {'steps': 300}
  config.baselines.mlp = {'hidden': (64,), 'context_length': 4, 'steps': 400}
  config.baselines.lightgbm = {'num_boost_round': 100}

  # Pooled FLAG-TRADERs: name -> training config (train.train_and_evaluate); data, labels,
  # split and seed are set per fold; run as the names in `models`.
  config.flag_traders = ml_collections.ConfigDict()
  small = flag_trader_config('small')
  small.train.update(num_epochs=2, steps_per_epoch=150, warmup_steps=20,
                     checkpoint_every_steps=0, keep_latest=1, log_every_steps=150)
  config.flag_traders.flag_trader = small

  config.backtest = backtest_config()  # costs and calibration
  config.portfolio = ml_collections.ConfigDict()
  config.portfolio.k = 3  # coins per book of the long-short portfolio
  config.portfolio.rebalance_every = 24  # bars between long-short rebalances
  config.portfolio.band = 1  # ranks of hysteresis before a held coin leaves its book
  config.portfolio.short_rate = 0.10  # annual shorting cost on short notional
  config.portfolio.timing_position = 1.0  # share of a coin's sleeve a BUY holds (long-only)

  # The answers of the report, stated as tests (research/universe_report.py).
  config.tests = ml_collections.ConfigDict()
  # model_a:model_b pairs, a minus b (LightGBM is an extra: without it the others answer)
  config.tests.compare = 'flag_trader:lightgbm,flag_trader:mlp,flag_trader:logistic'
  config.tests.seed_claim = 0.8  # H0: the seed's rule earns at least this net Sharpe per coin
  # The models the claim is tested for (one Holm family): FLAG-TRADER with the seed's own inputs
  # ('@himari', no market context) and with market context. Other models are shown unjudged.
  config.tests.seed_claim_models = 'flag_trader,flag_trader@himari'
  config.tests.level = 0.05
  config.tests.num_resamples = 1000  # time-block bootstrap resamples of each test
  config.tests.null_rotations = 40  # placebo shifts of each long-short portfolio per fold
  config.tests.null_min_offset = 168  # bars a shift keeps from the real alignment either way
  config.tests.ic_window = 720  # bars of the rolling rank IC plotted

  if variant == 'universe_gpu':
    config.num_seeds = 3
    config.baselines.mlp = {'hidden': (128, 64), 'context_length': 8, 'steps': 2000}
    seed = flag_trader_config('seed')
    seed.decision.logit_bias = default_config().decision.logit_bias  # calibrated instead
    seed.train.update(context_length=64, window_stride=8, num_epochs=3, steps_per_epoch=1000,
                      checkpoint_every_steps=0, keep_latest=1, log_every_steps=250)
    seed.model.update(dtype='bfloat16', max_length=max(seed.model.max_length, 64))
    config.flag_traders.flag_trader = seed
  elif variant == 'universe_smoke':
    config.data.symbols = 'BTC,ETH,BNB,ADA,XRP'
    config.models = ('label_prior,buy_and_hold,reversal,momentum,logistic,mlp,lightgbm,'
                     'flag_trader,logistic@himari')
    config.num_seeds = 1
    config.tests.num_resamples = 300
    config.folds.max_folds = 2
    config.portfolio.k = 1
    config.baselines.logistic = {'steps': 150}
    config.baselines.mlp = {'hidden': (32,), 'context_length': 4, 'steps': 200}
    config.flag_traders.flag_trader.train.update(num_epochs=1, steps_per_epoch=60)
  return config


def sharpe_variant(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`base` trained on the negative net-of-cost Sharpe ratio (`config.train.objective`).

  Long-only is set per trial from `config.backtest`, whose costs must be the ones its trading
  loss charges (`with_benchmark_costs`).
  """
  out = base.copy_and_resolve_references()
  out.train.objective = 'sharpe'
  return out


def reinforce_variant(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`base` trained as a SELL / HOLD / BUY policy by REINFORCE on the net-of-cost return
  (`config.train.objective='reinforce'`, FLAG-Trader's policy gradient), best checkpoint by
  the net Sharpe of its greedy play on validation. An action model: its probabilities go
  through the policy selection uncalibrated (it never trained on the labels).
  """
  out = base.copy_and_resolve_references()
  out.train.objective = 'reinforce'
  out.train.best_metric = '-val_net_sharpe'
  return out


CONFIGS: dict[str, Callable[..., ml_collections.ConfigDict]] = {
    'default': default_config, 'flag_trader': flag_trader_config,
    'backtest': backtest_config, 'ensemble': ensemble_config,
    'walk_forward': walk_forward_config, 'pretrain': pretrain_config,
    'placebo': placebo_config, 'benchmark': benchmark_config}


def get_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config `name` of `CONFIGS` with its argument (a variant), as configs/<name>.py gives.

  Raises:
    ValueError: an unknown name or variant; the message lists the valid ones.
  """
  if name not in CONFIGS:
    raise ValueError(f'unknown config {name!r}; valid: {", ".join(CONFIGS)}')
  return CONFIGS[name](arg) if arg is not None else CONFIGS[name]()


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'flag_trader:tiny', 'configs/flag_trader.py:tiny' or 'backtest' -> the config.

  The one way tests, benchmarks and scripts load a config variant; a `configs/<name>.py`
  path names the same config as `<name>` (those files return these configs).
  """
  name, _, arg = spec.partition(':')
  name = name.rsplit('/', 1)[-1].removesuffix('.py')
  return get_config(name, arg or None)
