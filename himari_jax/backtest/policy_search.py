"""What a policy search found and what it may claim (SPEC 8 and 11), as the reports show it.

A search is judged where it ran: `selection_deflation` deflates the validation winner's
validation Sharpe by every policy tried there, `selection_null_summary` sets it against the
same search on the probabilities rotated in time (`policy.selection_null`), and `auto_decision`
uses the selected policy only if it beats the seed rule by more than that null's search does;
`window_summary` gives both policies' objective on each validation window of a nested
selection. On the test bars, `compare_on_test` gives PSR(0) with HAC errors of the selected
policy and the seed rule, Holm-adjusted over the two; `null_test_sharpe` trades the null's
winners there too; `auto_track_record` tells 'auto' to fall back to the seed rule where the
selected policy trailed it on earlier walk-forward folds' test bars; `sweep_deflation` deflates
a sweep on the bars it swept. Every result is JSON-ready.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd

from himari_jax import json_types
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import policy as policy_lib
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import selection as selection_lib
from himari_jax.stats import sharpe_inference


def _returns(result: backtest_lib.BacktestResult, params: backtest_lib.BacktestParams
             ) -> np.ndarray:
  return np.asarray(metrics_lib.period_returns(result.equity, params.initial_capital))


def selection_deflation(val_df: pd.DataFrame, val_probs: np.ndarray,
                        selection: policy_lib.PolicySelection,
                        params: backtest_lib.BacktestParams, *, sigma_annual: Any,
                        periods_per_year: float) -> dict:
  """The deflated Sharpe ratio of the validation winner on the validation bars, against
  every policy of the sweep (`selection.selection_deflated_sharpe`).

  Args:
    val_df: (V,) the validation bars the sweep ran on; val_probs: (V, 3) their probabilities.
    selection: the sweep's outcome; params: its costs; sigma_annual: (V,) its volatility.
    periods_per_year: annualisation of the sweep's Sharpe ratios.
  """
  winner = policy_lib.run_policy(val_df, val_probs, selection.policy, params,
                                 sigma_annual=sigma_annual, periods_per_year=periods_per_year)
  returns = _returns(winner, params)
  if not np.std(returns) > 0:
    return {'label': f'selection: DSR of the validation winner ({selection.num_trials} '
                     f'trials, {len(val_df)} validation bars)', 'dsr': None,
            'note': 'the winner never traded on validation'}
  deflated = selection_lib.selection_deflated_sharpe(
      returns, selection.table['sharpe'].to_numpy(np.float64), periods_per_year=periods_per_year)
  return json_types.to_json_types(deflated, finite_only=True)


def window_summary(selection: policy_lib.PolicySelection, seed_index: int,
                   times: pd.Index | None = None) -> dict:
  """How a selection judged the validation windows (`policy.select_policy`), JSON-ready.

  Args:
    selection: the selection; seed_index: the seed rule's row in its grid.
    times: the validation bars' times, to date each window (None: bar indices only).

  Returns:
    {'label' (`PolicySelection.rule`), 'windows' (W), 'bars': [[first, last], ...] (times or
    bar indices), 'min_round_trips' (each window's), 'selected' and 'seed_rule' (W,) their
    per-window objectives (None where it never traded), 'selected_score' and
    'seed_rule_score': what the rule ranked them by (the worst window when nested)."""
  score = selection.table['objective'].to_numpy(np.float64)
  name = (lambda bar: str(times[bar])) if times is not None else int
  return json_types.to_json_types({
      'label': selection.rule, 'windows': selection.nested_windows,
      'bars': [[name(start), name(stop - 1)] for start, stop in selection.windows],
      'min_round_trips': selection.window_round_trips,
      'selected': selection.window_objectives(selection.index),
      'seed_rule': selection.window_objectives(seed_index),
      'selected_score': score[selection.index], 'seed_rule_score': score[seed_index],
  }, finite_only=True)


def selection_null_summary(null: policy_lib.SelectionNull, real_sharpe: float) -> dict:
  """A selection null against the real winner's validation Sharpe: `label`, `rotations`,
  `p_value` ((1 + k) / (1 + R), k null winners at or above the real one), the null winners'
  validation Sharpe `null_sharpe_mean`, `null_sharpe_std` and `null_sharpe_q95`."""
  sharpe = null.sharpe[np.isfinite(null.sharpe)]
  nested = ('' if null.nested_windows == 1 else
            f', each ranked by the same nested rule over {null.nested_windows} windows')
  return json_types.to_json_types({
      'label': f'selection null: the search rerun on the probabilities rotated in time '
               f'({len(null.offsets)} rotations of {null.min_offset} bars or more{nested})',
      'rotations': len(null.offsets),
      'p_value': selection_lib.null_p_value(null.sharpe, real_sharpe),
      'null_sharpe_mean': float(np.mean(sharpe)) if sharpe.size else np.nan,
      'null_sharpe_std': float(np.std(sharpe, ddof=1)) if sharpe.size > 1 else np.nan,
      'null_sharpe_q95': float(np.quantile(sharpe, 0.95)) if sharpe.size else np.nan,
  }, finite_only=True)


def auto_decision(selection: policy_lib.PolicySelection, null: policy_lib.SelectionNull | None,
                  seed_index: int) -> dict:
  """'auto': the selected policy is used only if its validation objective beats the seed
  rule's by more than the selection null's 95th percentile of the same margin (each null
  winner's objective minus the seed rule's, both on the same rotated probabilities); without
  a null, by more than 0. A policy that never trades scores 0 here (a flat book). With a
  nested selection both objectives are the worst window's, and the null's too (the same rule).

  Args:
    selection: the real selection (with eligible policies); null: its null, or None.
    seed_index: the seed rule's row in the grid.

  Returns:
    {'used_selected', 'rule', 'margin', 'bar', 'reason'}.
  """
  score = selection.table['objective'].to_numpy(np.float64)
  margin = float(score[selection.index] - np.nan_to_num(score[seed_index], nan=0.0))
  if null is None:
    bar, rule = 0.0, 'beat the seed rule on validation (no selection null was run)'
  else:
    rows = np.arange(len(null.winners))
    found = null.objective[rows, np.maximum(null.winners, 0)]
    null_margin = np.where(null.winners >= 0,
                           found - np.nan_to_num(null.objective[:, seed_index], nan=0.0), -np.inf)
    bar = float(np.quantile(null_margin, 0.95, method='higher'))
    rule = (f'beat the seed rule on validation by more than the 95th percentile of that margin '
            f'in the selection null ({len(rows)} rotations)')
  used = bool(margin > bar)
  judged = (selection.objective if selection.nested_windows == 1 else
            f'worst-window {selection.objective} (of {selection.nested_windows} windows)')
  reason = (f'the selected policy\'s {judged} margin over the seed rule on '
            f'validation is {margin:+.2f} against a bar of {bar:+.2f} (it must {rule}): '
            + ('using the selected policy' if used else 'using the seed rule'))
  return json_types.to_json_types({'used_selected': used, 'rule': rule, 'margin': margin,
                                   'bar': bar, 'reason': reason}, finite_only=True)


def auto_track_record(differences: Sequence[float]) -> dict:
  """Whether the selected policy trailed the seed rule on past test windows, so that 'auto'
  falls back to the seed rule (walk-forward applies it causally: a fold reads the record of
  the folds before it only).

  Args:
    differences: per past fold, the selected policy's net test Sharpe minus the seed rule's
      (NaN where the search selected nothing; left out).

  Returns:
    {'folds' (n with a difference), 'trailing_folds' (k with a difference < 0),
    'mean_difference' (None without a record), 'trails' (mean difference < 0), 'line'}.
  """
  found = np.asarray(differences, np.float64)
  found = found[np.isfinite(found)]
  if not found.size:
    return {'folds': 0, 'trailing_folds': 0, 'mean_difference': None, 'trails': False,
            'line': 'no walk-forward record of the selected policy against the seed rule yet'}
  mean, behind = float(np.mean(found)), int(np.sum(found < 0))
  trails = bool(mean < 0)
  line = ((f'auto falls back to the seed rule: the selected policy trailed it on {behind} of '
           f'{found.size} folds (mean difference {mean:+.2f} net Sharpe)') if trails else
          (f'the selected policy did not trail the seed rule: behind on {behind} of '
           f'{found.size} folds (mean difference {mean:+.2f} net Sharpe)'))
  return {'folds': int(found.size), 'trailing_folds': behind, 'mean_difference': mean,
          'trails': trails, 'line': line}


def null_test_sharpe(df: pd.DataFrame, probs: np.ndarray, null: policy_lib.SelectionNull,
                     grid: policy_lib.PolicyParams, params: backtest_lib.BacktestParams, *,
                     sigma_annual: Any, periods_per_year: float) -> dict:
  """The test Sharpe ratios of the policies the selection null chose on rotated validation
  probabilities, traded on the real test probabilities (one sweep call): what a search that
  found only noise delivers on these bars.

  Args:
    df: the N test bars; probs: (N, 3) their probabilities; null: the selection null;
    grid: the grid it searched; params, sigma_annual, periods_per_year: of the test.

  Returns:
    {'label', 'sharpe_mean', 'sharpe_std', 'winners'} (None where no null winner traded).
  """
  label = ('selection null on test: the policies the search chose on rotated validation '
           'probabilities, traded on the test bars')
  chosen = null.winners[null.winners >= 0]
  if not chosen.size:
    return {'label': label, 'sharpe_mean': None, 'sharpe_std': None, 'winners': 0}
  policies = jax.tree.map(lambda x: np.asarray(x)[chosen], grid)
  table = policy_lib.sweep_policies(df, probs, policies, params, sigma_annual=sigma_annual,
                                    periods_per_year=periods_per_year, metrics='core')
  sharpe = table['sharpe'].to_numpy(np.float64)
  sharpe = sharpe[np.isfinite(sharpe)]
  return json_types.to_json_types({
      'label': label, 'winners': int(chosen.size),
      'sharpe_mean': float(np.mean(sharpe)) if sharpe.size else np.nan,
      'sharpe_std': float(np.std(sharpe, ddof=1)) if sharpe.size > 1 else np.nan,
  }, finite_only=True)


def compare_on_test(df: pd.DataFrame, actions: np.ndarray, confidence: np.ndarray,
                    probs: np.ndarray, selected: policy_lib.PolicyParams, seed_traded: bool,
                    traded_returns: np.ndarray, params: backtest_lib.BacktestParams, *,
                    sigma_annual: Any, periods_per_year: float) -> dict:
  """PSR(0) with HAC errors of the two policies a selection puts on the test bars, the
  selected policy and the seed rule (argmax + confidence threshold), Holm-adjusted.

  Args:
    df: the N test bars; actions, confidence: (N,) the seed's decisions; probs: (N, 3) the
      probabilities the selected policy trades; selected: that policy.
    seed_traded: whether the seed rule (else the selected policy) is the one traded.
    traded_returns: (N,) per-bar returns of the traded one (already simulated).
    params, sigma_annual, periods_per_year: of the test.

  Returns:
    {'adjustment': which p-values the Holm adjustment covers, 'rows': [{'name', 'traded',
    'sharpe', 'se', 'psr', 'p_value', 'p_holm', 'min_detectable_sharpe'}, ...]}.
  """
  if seed_traded:
    seed_returns = traded_returns
    selected_returns = _returns(policy_lib.run_policy(
        df, probs, selected, params, sigma_annual=sigma_annual,
        periods_per_year=periods_per_year), params)
  else:
    selected_returns = traded_returns
    seed_returns = _returns(backtest_lib.run_backtest(df, actions, confidence, params), params)
  keys = ('sharpe', 'se', 'psr', 'p_value', 'min_detectable_sharpe')
  rows = []
  for name, returns, traded in (('selected policy', selected_returns, not seed_traded),
                                ('seed rule', seed_returns, seed_traded)):
    inference = (sharpe_inference.probabilistic_sharpe_hac(
        returns, periods_per_year=periods_per_year) if np.std(returns) > 0 else
        dict.fromkeys(keys, np.nan))
    rows.append({'name': name, 'traded': traded, **{k: inference[k] for k in keys}})
  adjusted = selection_lib.holm_adjust([row['p_value'] for row in rows])
  for row, p in zip(rows, adjusted, strict=True):
    row['p_holm'] = p
  return {'adjustment': 'Holm over the PSR(0) p-values of the 2 policies tested: the '
                        'selected policy and the seed rule',
          'rows': json_types.to_json_types(rows, finite_only=True)}


def sweep_deflation(df: pd.DataFrame, table: pd.DataFrame, actions: np.ndarray,
                    confidence: np.ndarray, params: backtest_lib.BacktestParams, *,
                    periods_per_year: float) -> dict:
  """DSR of the best row of a (strategy, threshold) sweep on the bars it ran on.

  Args:
    df: the N bars swept; table: `backtest.sweep`'s rows (signal-major, then threshold).
    actions, confidence: (S, N) the signals swept, in the table's signal order.
    params: the sweep's settings but the threshold; periods_per_year: its annualisation.
  """
  sharpes = table['sharpe'].to_numpy(np.float64)
  label = f'sweep: DSR of the best of the sweep ({len(table)} trials, {len(df)} bars swept)'
  if not np.isfinite(sharpes).any():
    return {'label': label, 'dsr': None, 'note': 'no configuration of the sweep traded'}
  best = int(np.nanargmax(sharpes))
  row = table.iloc[best]
  signal = best // (len(table) // actions.shape[0])
  params = dataclasses.replace(params, confidence_threshold=np.asarray(
      row['confidence_threshold']))
  returns = _returns(backtest_lib.run_backtest(df, actions[signal], confidence[signal], params),
                     params)
  deflated = selection_lib.selection_deflated_sharpe(
      returns, sharpes, periods_per_year=periods_per_year, sample='sweep')
  return {**json_types.to_json_types(deflated, finite_only=True), 'label': label,
          'best': {'signal': str(row['signal']),
                   'confidence_threshold': float(row['confidence_threshold'])}}
