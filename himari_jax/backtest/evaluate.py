"""The backtest pipeline: checkpoints -> decider (decider.py) -> backtest -> reports.

`backtest_pipeline` is what launch/backtest.py and quickstart.py run; `backtest_and_report`
backtests given decisions against buy-and-hold, adds the significance tests (SPEC 7), the
gross / cost / net attribution and cost-sensitivity curve (SPEC 9) and writes every report file
(walk-forward uses it on its stitched test windows). The pipeline also writes `policy.json`:
the policy it traded, with the members and settings, for paper trading to take
(`read_policy_file`; launch/trade_signal.py --policy).

`config.policy.mode` says how probabilities become positions (SPEC 8): 'seed' (argmax plus
confidence threshold through the backtester, the seed's decisions), 'fixed' (the policy of
`config.policy`) or 'select' (the best policy of a grid on the validation bars the members'
calibration uses, never test bars; by default nested over `config.policy.nested_windows`
validation windows, the best worst-window objective, `policy.select_policy`). A search is
judged where it ran (SPEC 11): the validation winner's validation Sharpe ratio is deflated by
every policy tried there; the test result gets PSR(0) with a HAC error, Holm-adjusted over
the policies compared on the test bars (the selected policy and the seed rule).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants, json_types
from himari_jax.backtest import decider as decider_lib
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.backtest import policy_search as search_lib
from himari_jax.backtest import report as report_lib
from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline, plausibility
from himari_jax.data import ohlcv as data_lib
from himari_jax.inference import decisions as decisions_lib
from himari_jax.inference import ensemble as ensemble_lib
from himari_jax.inference import members as members_lib
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import significance as significance_lib

# 'auto' (quickstart's default): 'select', but the seed's decisions unless the selected
# policy beats the seed rule at the configured threshold on the validation bars by more than
# the search finds in its own null (`policy_search.auto_decision`).
POLICY_MODES = ('seed', 'fixed', 'select', 'auto')
# Default axes of a 'select' grid given in part (policy.default_grid's values).
_GRID_DEFAULTS = {'entry': (0.1, 0.2, 0.3, 0.4, 0.5), 'exit_gap': (0.0, 0.1, 0.2, 0.3),
                  'min_hold': (0, 6, 24, 72), 'cooldown': (0, 12),
                  'sizing': policy_lib.POLICY_SIZINGS}
_SEED_THRESHOLDS = (0.0, 0.4, 0.5, 0.6)  # seed policies every 'select' grid also tries


def fixed_policy(policy_config: ml_collections.ConfigDict) -> policy_lib.PolicyParams:
  """The policy of `config.policy`'s fields (validated: errors name the bad field)."""
  fields = ('signal', 'entry', 'exit', 'min_hold', 'cooldown', 'sizing', 'max_position_pct',
            'target_vol', 'max_leverage', 'band', 'allow_short', 'trim')
  return policy_lib.make_policy(**{k: policy_config[k] for k in fields})


def selection_grid(policy_config: ml_collections.ConfigDict,
                   seed_threshold: float = 0.0) -> policy_lib.PolicyParams:
  """The grid 'select' searches: `policy.default_grid()` with the sizes, band and shorting of
  `config.policy`, each axis narrowed to `config.policy.grid.<axis>` where that is set, plus
  the seed at thresholds 0, 0.4, 0.5 and 0.6 and at `seed_threshold` (the configured
  confidence threshold, the seed rule 'auto' compares against)."""
  pc = policy_config
  cast = {'entry': float, 'exit_gap': float, 'min_hold': int, 'cooldown': int, 'sizing': str}
  axes = {}
  for name, kind in cast.items():
    given = config_lib.split_list(str(pc.grid.get(name, '') or ''))
    try:
      axes[name] = [kind(v) for v in given] or list(_GRID_DEFAULTS[name])
    except ValueError as e:
      raise ValueError(f'policy.grid.{name}={pc.grid[name]!r}: {e}') from None
  base = dict(band=pc.band, allow_short=pc.allow_short, max_position_pct=pc.max_position_pct,
              target_vol=pc.target_vol, max_leverage=pc.max_leverage, trim=pc.trim)
  margin = [policy_lib.make_policy_grid(
      dict(base, entry=entry), exit=[round(entry - gap, 4) for gap in axes['exit_gap']],
      min_hold=axes['min_hold'], cooldown=axes['cooldown'], sizing=axes['sizing'])
      for entry in axes['entry'] if any(entry - gap >= -1 for gap in axes['exit_gap'])]
  thresholds = list(dict.fromkeys([*_SEED_THRESHOLDS, float(seed_threshold)]))
  seeds = [policy_lib.seed_policy(t, max_position_pct=pc.max_position_pct,
                                  allow_short=pc.allow_short) for t in thresholds]
  return policy_lib.stack_policies([*margin, *seeds])


def seed_rule_index(grid: policy_lib.PolicyParams, threshold: float) -> int:
  """The row of `selection_grid(..., threshold)` that is the seed rule at `threshold`."""
  seeds = (np.asarray(grid.signal) == policy_lib.SIGNALS.index('argmax')) & np.isclose(
      np.asarray(grid.entry), threshold)
  return int(np.flatnonzero(seeds)[0])


def _grid_for(config: ml_collections.ConfigDict) -> policy_lib.PolicyParams:
  return selection_grid(config.policy, config.confidence_threshold)


@dataclasses.dataclass
class PolicyChoice:
  """How decisions were made: `mode` of `POLICY_MODES`; `policy` (None for 'seed');
  `selection` (for 'select'): the validation sweep; `summary`: JSON-able description;
  `null`: the selection's own null (`policy.selection_null`), when it was run."""

  mode: str
  policy: policy_lib.PolicyParams | None
  selection: policy_lib.PolicySelection | None
  summary: dict
  null: policy_lib.SelectionNull | None = None  # the selection rerun on rotated probabilities

  @property
  def num_trials(self) -> int:
    return self.selection.num_trials if self.selection is not None else 1


def sigma_for(df: pd.DataFrame, config: ml_collections.ConfigDict) -> np.ndarray:
  """(N,) annualised volatility of bars <= t that `vol_target` sizes by (`Decider.sigma` of
  the config's decider)."""
  return decider_lib.Decider.from_config(config, None).sigma(df)


def choose_policy(config: ml_collections.ConfigDict, val_df: pd.DataFrame | None = None,
                  val_probs: np.ndarray | None = None, *, log=print) -> PolicyChoice:
  """The policy of `config.policy.mode`; 'select' sweeps the grid on validation bars.

  Args:
    config: a backtest config (`policy`, costs, periods_per_year).
    val_df: (V,) validation bars (for 'select' only; never test bars).
    val_probs: (V, 3) calibrated probabilities of those bars (one member's, or an ensemble's
      combined vector).
  """
  pc = config.policy
  mode = pc.mode
  if mode not in POLICY_MODES:
    raise ValueError(f'policy.mode={mode!r}; use one of {", ".join(POLICY_MODES)}')
  seed_summary = {'mode': 'seed', 'num_trials': 1,
                  'policy': f'argmax + confidence_threshold {config.confidence_threshold:g}, '
                            f'sizing {config.sizing}'}
  if mode == 'seed':
    return PolicyChoice('seed', None, None, seed_summary)
  if mode == 'fixed':
    policy = fixed_policy(pc)
    return PolicyChoice('fixed', policy, None, {'mode': 'fixed', 'num_trials': 1,
                                                'policy': policy_lib.policy_to_dict(policy)})
  if val_df is None or val_probs is None:
    raise ValueError(f"policy.mode={mode!r} needs validation bars and their probabilities")
  params = backtest_lib.params_from_config(config)
  grid = _grid_for(config)
  rule = dict(grid=grid, objective=pc.objective, turnover_penalty=pc.turnover_penalty,
              min_round_trips=pc.min_round_trips, sigma_annual=sigma_for(val_df, config),
              periods_per_year=config.periods_per_year,
              nested_windows=pc.get('nested_windows', 1))
  selection = policy_lib.select_policy(val_df, val_probs, params, **rule)
  chosen = selection.table.iloc[selection.index]
  seeds = selection.table[selection.table['policy.signal'] == 'argmax']
  seed_index = seed_rule_index(grid, config.confidence_threshold)
  summary = {
      'mode': 'select', 'objective': selection.objective, 'num_trials': selection.num_trials,
      'min_round_trips': pc.min_round_trips, 'eligible': selection.num_eligible,
      'rule': selection.rule,
      'windows': search_lib.window_summary(selection, seed_index, val_df.index),
      'policy': policy_lib.policy_to_dict(selection.policy),
      'validation': {'first': str(val_df.index[0]), 'last': str(val_df.index[-1]),
                     'bars': len(val_df), 'sharpe': float(chosen['sharpe']),
                     'total_return': float(chosen['total_return']),
                     'num_trades': int(chosen['num_trades']),
                     'num_round_trips': int(chosen['num_round_trips']),
                     'turnover_per_year': float(chosen['turnover_per_year']),
                     'best_seed_sharpe': float(np.nanmax(seeds['sharpe']))
                     if len(seeds) and np.isfinite(seeds['sharpe']).any() else None}}
  fallback = {**seed_summary, 'num_trials': selection.num_trials,
              'objective': selection.objective, 'rule': selection.rule}
  if not selection.num_eligible:
    # The seed was kept after looking at every policy: they all count as trials.
    trips = (f'{pc.min_round_trips} validation round trips' if selection.nested_windows == 1
             else f'{summary["windows"]["min_round_trips"]} round trips in each of '
                  f'{selection.nested_windows} validation windows')
    fallback['fallback'] = (f'no policy made {trips} with a defined {selection.objective}: '
                            'using the seed rule')
    log(f'policy: {fallback["fallback"]}')
    return PolicyChoice('seed', None, selection, fallback)
  summary['selection'] = search_lib.selection_deflation(
      val_df, val_probs, selection, params, sigma_annual=rule['sigma_annual'],
      periods_per_year=config.periods_per_year)
  log(f'policy: selected 1 of {selection.num_trials} ({selection.num_eligible} with >= '
      f'{pc.min_round_trips} round trips) on {len(val_df)} validation bars '
      f'({val_df.index[0]:%Y-%m-%d} .. {val_df.index[-1]:%Y-%m-%d}) by {selection.objective}: '
      f'validation Sharpe {chosen["sharpe"]:.2f}; {summary["selection"]["label"]} = '
      f'{_num(summary["selection"]["dsr"], ".3f")}')
  log(report_lib.window_line(summary['windows']))
  null = None
  if pc.null_rotations and len(val_df) < 2 * pc.null_min_offset:
    summary['null'] = {'label': 'selection null: not run', 'note': (
        f'{len(val_df)} validation bars cannot be rotated by policy.null_min_offset = '
        f'{pc.null_min_offset} bars or more either way')}
    log(f'{summary["null"]["label"]}: {summary["null"]["note"]}')
  elif pc.null_rotations:
    null = policy_lib.selection_null(
        val_df, val_probs, params, **rule, num_rotations=pc.null_rotations,
        min_offset=pc.null_min_offset, seed=config.significance.seed)
    summary['null'] = search_lib.selection_null_summary(null, float(chosen['sharpe']))
    log(f'{summary["null"]["label"]}: P(null winner >= real winner) = '
        f'{_num(summary["null"]["p_value"], ".3f")} (null winners\' validation Sharpe '
        f'{_num(summary["null"]["null_sharpe_mean"], ".2f")} +- '
        f'{_num(summary["null"]["null_sharpe_std"], ".2f")})')
  if mode == 'auto':
    summary['auto'] = search_lib.auto_decision(selection, null, seed_index)
    log(f'policy auto: {summary["auto"]["reason"]}')
    if not summary['auto']['used_selected']:
      # The policy the search chose stays on record (walk-forward tests it beside the seed).
      return PolicyChoice('seed', None, selection, {
          **fallback, 'selected_policy': summary['policy'],
          **{k: summary[k] for k in ('auto', 'validation', 'selection', 'null', 'windows')
             if k in summary}}, null)
  return PolicyChoice('select', selection.policy, selection, summary, null)


def _num(value: float | None, spec: str) -> str:
  return 'n/a' if value is None or not np.isfinite(value) else format(value, spec)


def validation_probabilities(members: Sequence, calibration_config: ml_collections.ConfigDict,
                             fitted: Sequence, *, weights: Sequence[float] | None = None,
                             asset: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
  """Validation bars of the first member's training data and the members' combined,
  calibrated probabilities on them, `(V, 3)`: what 'select' chooses a policy on."""
  frame, num_val = members_lib.validation_frame(members[0], asset)
  probs, _, _ = members_lib.member_probabilities(members, frame, calibration_config,
                                                 asset=asset, fitted=fitted)
  return frame.iloc[-num_val:], decisions_lib.combined_probabilities(probs[:, -num_val:],
                                                                     weights)


class InSampleError(ValueError):
  """A backtest on bars a member trained or validated on, not allowed by the config."""


def in_sample_check(members: Sequence, names: Sequence[str], df: pd.DataFrame,
                    config: ml_collections.ConfigDict, *, log=print) -> list[str]:
  """Refuses a backtest on bars a member trained or validated on (SPEC 11), unless
  `config.allow_in_sample`; then the caveat heads the report.

  Args:
    members, names: the loaded members and their paths; df: the N bars to backtest.
    config: a backtest config (`allow_in_sample`).
    log: where a member whose data range is not recorded is reported.

  Returns:
    The in-sample caveat lines to show first ([] when out of sample).

  Raises:
    InSampleError: one line naming each overlap (member, part, bars, first and last bar).
  """
  overlaps, unknown = members_lib.in_sample_overlaps(members, names, df.index)
  for name in unknown:
    log(f'{name}: its training and validation bars are not recorded, so their overlap with '
        'the backtest cannot be checked')
  if not overlaps:
    return []
  found = '; '.join(o.describe() for o in overlaps)
  if not config.get('allow_in_sample', False):
    raise InSampleError(f'in-sample backtest refused: {found}. Backtest other bars, or pass '
                        '--allow_in_sample (config.allow_in_sample) to run it anyway.')
  return [f'IN-SAMPLE: these results are not out of sample: {found}.']


def lookahead_warnings(members: Sequence) -> list[str]:
  """The look-ahead caveat of every feature set a member uses (SPEC 3), once each."""
  found = [features_lib.lookahead_warning(features_lib.feature_set_of(m.config))
           for m in members]
  return list(dict.fromkeys(w for w in found if w))


def backtest_pipeline(config: ml_collections.ConfigDict, outdir: str, *,
                      sweep: bool = False, log=print) -> dict:
  """checkpoints -> predictions -> calibration -> ensemble -> policy -> backtest -> reports.

  Args:
    config: a `configs/backtest.py` config (checkpoints, dataset, strategy, calibration,
      policy, costs and sizing, sweep grid, significance settings).
    outdir: where the reports go.
    sweep: also backtest every (strategy, confidence threshold) of `config.sweep` on the
      backtest's bars in one compiled call, write `sweep.csv`, and deflate the sweep's best
      Sharpe ratio by that many trials on those bars (`significance.sweep`).
    log: where progress lines go; a look-ahead caveat (SPEC 3) is the first.

  Returns:
    {'metrics', 'benchmark', 'significance', 'attribution', 'policy', 'paths', 'sweep'
     (a DataFrame or None), 'warnings'}.
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
  config_lib.check_ranges(config, config_lib.BACKTEST_RANGES)
  backtest_lib.params_from_config(config)  # validates costs and sizing up front
  if config.policy.mode not in POLICY_MODES:
    raise ValueError(f'policy.mode={config.policy.mode!r}; use one of {", ".join(POLICY_MODES)}')
  if config.policy.mode == 'fixed':
    fixed_policy(config.policy)  # validates the policy up front
  weights = decider_lib.weights_from_config(config, len(paths))
  df = data_lib.load_dataset(config.dataset, fill_gaps=True)
  data_checks = check_backtest_bars(df, config, log)
  members = [members_lib.load_member(p, config.which) for p in paths]
  in_sample = in_sample_check(members, paths, df, config, log=log)
  warnings = lookahead_warnings(members)
  for warning in [*in_sample, *warnings]:
    log(warning)
  log(f'loaded {len(paths)} model(s): {", ".join(paths)}')
  log(f'predicting {len(df)} bars of {config.dataset} '
      f'({df.index[0]:%Y-%m-%d} .. {df.index[-1]:%Y-%m-%d}); calibration: '
      f'{config.calibration.mode}; policy: {config.policy.mode}')
  scorer = decider_lib.load_scorer(paths, config, asset=input_pipeline.asset_name(
      config.dataset), log=log, members=members)
  choice = choose_member_policy(config, scorer, weights, log=log)
  decider = decider_lib.Decider.from_config(config, choice.policy, scorer, weights)
  decisions = decider.decide(df)

  table = swept_best = None
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
    swept_best = search_lib.sweep_deflation(df, table, actions, confidence,
                                            backtest_lib.params_from_config(config),
                                            periods_per_year=config.periods_per_year)
    log(f'sweep: {len(table)} configurations in one compiled call -> '
        f'{os.path.join(outdir, "sweep.csv")}; {swept_best["label"]} = '
        f'{_num(swept_best["dsr"], ".3f")}')
  if choice.selection is not None:
    os.makedirs(outdir, exist_ok=True)
    choice.selection.table.to_csv(os.path.join(outdir, POLICY_CSV), index=False)

  extra = {'models': paths, 'calibration': decisions.calibrations,
           'available_bars': int(decisions.available.sum()), 'data': data_checks}
  probs = None
  if choice.policy is not None or choice.selection is not None:
    probs = decisions.combined()
  outcome = backtest_and_report(df, decisions.actions, decisions.confidence, config, outdir,
                                extra=extra, choice=choice, probs=probs, warnings=warnings,
                                in_sample=in_sample)
  if swept_best is not None:
    outcome['significance']['sweep'] = swept_best
  if choice.selection is not None:
    outcome['paths']['policies'] = os.path.join(outdir, POLICY_CSV)
  outcome['paths']['policy'] = write_policy_file(
      os.path.join(outdir, POLICY_JSON), config, choice, scorer,
      backtest_data={'dataset': config.dataset, 'first': str(df.index[0]),
                     'last': str(df.index[-1]), 'bars': len(df)})
  return {**outcome, 'sweep': table}


POLICY_CSV = 'policy_selection.csv'
POLICY_JSON = 'policy.json'


def choose_member_policy(config: ml_collections.ConfigDict, scorer: decider_lib.MemberScorer,
                         weights: Sequence[float] | None, *, log=print) -> PolicyChoice:
  """`choose_policy` for members: 'select' and 'auto' choose on the validation bars of the
  first member's training data, scored by all of them (`validation_probabilities`)."""
  val = (validation_probabilities(scorer.members, scorer.calibration_config, scorer.fitted,
                                  weights=weights, asset=scorer.asset)
         if config.policy.mode in ('select', 'auto') else (None, None))
  return choose_policy(config, *val, log=log)


# The settings of a backtest config that decide and fill, as a policy file carries them to
# paper trading (besides `policy`).
_DECISION_FIELDS = ('strategy', 'weights', 'confidence_threshold', 'predict_batch_size',
                    'initial_capital', 'commission', 'slippage', 'commission_sell',
                    'slippage_sell', 'max_position_pct', 'fill', 'allow_short', 'sizing',
                    'periods_per_year')


def write_policy_file(path: str, config: ml_collections.ConfigDict, choice: PolicyChoice,
                      scorer: decider_lib.MemberScorer, *, backtest_data: dict) -> str:
  """Writes the policy a backtest traded, to hand to paper trading (`read_policy_file`).

  policy.json holds the policy line (`report.policy_line`), `choice` (mode, policy fields,
  the summary with the validation range a selected policy was chosen on), the members it was
  chosen for (path and checkpoint step), the calibration, ensemble and fill settings
  (`_DECISION_FIELDS`, `config.policy`) and the bars backtested. Returns `path`.
  """
  record = {
      'line': report_lib.policy_line(choice.summary),
      'mode': choice.mode,
      'policy': None if choice.policy is None else policy_lib.policy_to_dict(choice.policy),
      'summary': choice.summary,
      'chosen_on': (None if 'validation' not in choice.summary else
                    {'data': scorer.members[0].config.data.train,
                     **choice.summary['validation']}),
      'members': scorer.identity(),
      'settings': {**{k: config.get(k) for k in _DECISION_FIELDS},
                   'calibration': config.calibration.to_dict(),
                   'policy': config.policy.to_dict()},
      'backtest_data': backtest_data,
  }
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(json_types.to_json_types(record), f, indent=1)
  return path


def read_policy_file(path: str, config: ml_collections.ConfigDict
                     ) -> tuple[PolicyChoice, list[dict]]:
  """The policy of a `write_policy_file` file, with `config` set to the file's decision
  settings (calibration, ensemble, costs, sizing, fill timing, `config.policy`).

  Returns:
    (the PolicyChoice, mode 'seed', 'fixed' or 'select', without the selection table; the
    members it was chosen for, [{'path', 'step'}]).

  Raises:
    ValueError: the file is not a policy file (a line names what is missing).
  """
  with open(path) as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not a policy file ({e})') from None
  missing = [k for k in ('mode', 'policy', 'summary', 'members', 'settings') if k not in record]
  if missing:
    raise ValueError(f'{path}: not a policy file written by a backtest (no '
                     f'{", ".join(missing)}); pass runs/<name>/backtest/{POLICY_JSON}')
  settings = record['settings']
  with config.unlocked():
    for key in _DECISION_FIELDS:
      if key in settings:
        config[key] = settings[key]
    config.calibration = ml_collections.ConfigDict(settings['calibration'])
    config.policy = ml_collections.ConfigDict(settings['policy'])
  policy = None if record['policy'] is None else policy_lib.make_policy(**record['policy'])
  if (policy is None) != (record['mode'] == 'seed'):
    raise ValueError(f'{path}: mode {record["mode"]!r} with policy {record["policy"]}')
  return PolicyChoice(record['mode'], policy, None, record['summary']), record['members']


def metrics_vs_buy_and_hold(df: pd.DataFrame, result: backtest_lib.BacktestResult,
                            config: ml_collections.ConfigDict
                            ) -> tuple[dict, backtest_lib.BacktestResult, dict]:
  """SPEC 7 metrics of a backtest and of buy-and-hold on the same bars, with the same costs.

  Args:
    df: the OHLCV frame of the N bars backtested.
    result: the backtest's (N,) record.
    config: a backtest config (costs, capital, periods_per_year, risk_free_rate).

  Returns:
    (metrics of `result`, buy-and-hold's record, its metrics); metrics as JSON-ready Python
    values (`report.to_python`).
  """
  params = backtest_lib.params_from_config(config)
  market = metrics_lib.market_returns(np.asarray(df['close'], np.float64))
  benchmark = backtest_lib.buy_and_hold(df, params)
  kwargs = dict(periods_per_year=config.periods_per_year, risk_free_rate=config.risk_free_rate)
  return (report_lib.to_python(metrics_lib.compute_metrics(result, market,
                                                          params.initial_capital, **kwargs)),
          benchmark,
          report_lib.to_python(metrics_lib.compute_metrics(benchmark, market,
                                                          params.initial_capital, **kwargs)))


def check_backtest_bars(df: pd.DataFrame, config: ml_collections.ConfigDict,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
  """`plausibility.check_bars` of the bars a backtest config trades: their interval against
  `config.periods_per_year`, filled gaps, implausible moves (`config.max_bar_move`,
  `config.refuse_large_moves`). Returns the report for the results JSON."""
  return plausibility.check_bars(
      df, source=str(config.dataset or df.attrs.get('source', 'the bars')),
      expected_interval=plausibility.interval_of(config.periods_per_year),
      interval_setting=f'--config.periods_per_year={config.periods_per_year:g}',
      max_bar_move=config.get('max_bar_move', plausibility.MAX_BAR_MOVE),
      refuse_large_moves=config.get('refuse_large_moves', False), log=log)


def backtest_and_report(df: pd.DataFrame, actions: np.ndarray, confidence: np.ndarray,
                        config: ml_collections.ConfigDict, outdir: str, *,
                        extra: dict | None = None,
                        choice: PolicyChoice | None = None, probs: np.ndarray | None = None,
                        result: backtest_lib.BacktestResult | None = None,
                        warnings: Sequence[str] = (), in_sample: Sequence[str] = ()) -> dict:
  """Backtest of decisions, buy-and-hold, significance, attribution and every report file.

  Args:
    df: the OHLCV frame of the N bars decided on.
    actions: (N,) int actions; confidence: (N,) float in [0, 1]: the model's signal (the
      seed policy trades it; the reports count it).
    config: a `configs/backtest.py` config (costs, sizing, policy, significance settings).
    outdir: where the reports go.
    extra: more JSON-able sections for `backtest_results.json`; `significance`,
      `attribution`, `cost_sensitivity`, `policy` and `lookahead_warning` are added.
    choice: the decision policy (default: the seed's, `choose_policy` of a 'seed' config).
      With a selection, the selected policy and the seed rule are both tested and their
      PSR(0) p-values Holm-adjusted (`policy_search.compare_on_test`).
    probs: (N, 3) probabilities the policy of `choice` trades (needed unless 'seed', and
      whenever `choice` holds a selection).
    result: an already simulated backtest of these bars (walk-forward's chained folds);
      None simulates `choice` here. Without simulation here, no cost-sensitivity curve.
    warnings: caveats shown first (look-ahead features, SPEC 3).
    in_sample: `in_sample_check`'s caveat, shown before everything else and stored under
      `in_sample` in the JSON.

  Returns:
    {'metrics', 'benchmark', 'significance', 'attribution', 'policy', 'paths', 'warnings'}.
  """
  params = backtest_lib.params_from_config(config)
  choice = choice or PolicyChoice('seed', None, None, {'mode': 'seed', 'num_trials': 1})
  multipliers = backtest_lib.COST_MULTIPLIERS
  sensitivity = None
  if result is None:
    if choice.policy is not None and probs is None:
      raise ValueError(f'policy mode {choice.mode!r} needs the probabilities it trades')
    decider = decider_lib.Decider.from_config(config, choice.policy)
    result, _ = decider.trade(df, actions=actions, confidence=confidence, probs=probs)
    if choice.policy is None:
      sensitivity = backtest_lib.cost_sensitivity(df, actions, confidence, params,
                                                  multipliers=multipliers,
                                                  periods_per_year=config.periods_per_year)
    else:
      sensitivity = policy_lib.policy_cost_sensitivity(df, probs, choice.policy, params,
                                                       multipliers=multipliers,
                                                       sigma_annual=decider.sigma(df),
                                                       periods_per_year=config.periods_per_year)
  close = np.asarray(df['close'], np.float64)
  strategy_metrics, benchmark, benchmark_metrics = metrics_vs_buy_and_hold(df, result, config)
  capital = params.initial_capital
  equity = np.asarray(result.equity, np.float64)
  # Exposure as set at each fill and held until the next one: the signal whose timing the
  # shuffled-signal null permutes (marking to market between fills is not a decision).
  exposure = np.asarray(result.position, np.float64) * close / np.maximum(equity, 1e-12)
  filled = np.asarray(result.fill_qty) != 0
  exposure = pd.Series(np.where(filled, exposure, np.nan)).ffill().fillna(0.0).to_numpy()
  market = np.asarray(metrics_lib.market_returns(close))
  sig = config.significance
  returns = np.asarray(metrics_lib.period_returns(result.equity, capital))
  significance = significance_lib.significance_report(
      returns, np.asarray(metrics_lib.period_returns(benchmark.equity, capital)),
      positions=exposure, market_returns=market,
      num_resamples=sig.num_resamples, num_shuffles=sig.num_shuffles,
      cost_rate=(float(params.commission_buy + params.slippage_buy),
                 float(params.commission_sell + params.slippage_sell)),
      seed=sig.seed, periods_per_year=config.periods_per_year,
      block_length=sig.get('block_length'))
  if choice.selection is not None and choice.selection.num_eligible:
    significance['test_comparisons'] = search_lib.compare_on_test(
        df, actions, confidence, probs, choice.selection.policy, choice.mode == 'seed',
        returns, params, sigma_annual=sigma_for(df, config),
        periods_per_year=config.periods_per_year)
  if choice.null is not None:
    significance['null_test'] = search_lib.null_test_sharpe(
        df, probs, choice.null, _grid_for(config), params, sigma_annual=sigma_for(df, config),
        periods_per_year=config.periods_per_year)
  # The same rotated-signal null without costs: does the timing beat chance before costs?
  gross_null = significance_lib.shuffled_signal_test(
      exposure, market, cost_rate=0.0, num_shuffles=sig.num_shuffles, seed=sig.seed,
      periods_per_year=config.periods_per_year)
  significance['shuffled_signal_gross'] = {
      k: (v if np.isfinite(v) else None) for k, v in gross_null.items()
      if not isinstance(v, np.ndarray)}
  attribution = metrics_lib.attribution(result, capital,
                                        periods_per_year=config.periods_per_year,
                                        risk_free_rate=config.risk_free_rate)
  intervals = report_lib.attribution_intervals(result, capital,
                                               num_resamples=sig.num_resamples, seed=sig.seed,
                                               periods_per_year=config.periods_per_year,
                                               block_length=sig.get('block_length'))
  attribution_json = {'values': report_lib.to_python(attribution),
                      'intervals': {k: report_lib.to_python(v) for k, v in intervals.items()}}
  sections = {
      'policy': choice.summary,
      'policy_line': report_lib.policy_line(choice.summary),
      'significance': significance,
      'attribution': attribution_json,
      'cost_sensitivity': (None if sensitivity is None else
                           [report_lib.to_python(row) for row in sensitivity.to_dict('records')]),
  }
  if warnings:
    sections['lookahead_warning'] = ' '.join(warnings)
  if in_sample:
    sections['in_sample'] = ' '.join(in_sample)
  warnings = [*in_sample, *warnings]
  written = report_lib.write_reports(
      outdir, result, df, actions, confidence, config, metrics=strategy_metrics,
      benchmark=benchmark, benchmark_metrics=benchmark_metrics,
      extra={**(extra or {}), **sections}, warnings=warnings,
      attribution=(attribution, intervals, sensitivity), policy=choice.summary)
  return {'metrics': strategy_metrics, 'benchmark': benchmark_metrics,
          'significance': significance,
          'attribution': {'values': attribution, 'intervals': intervals},
          'policy': choice.summary, 'paths': written,
          'warnings': list(warnings)}
