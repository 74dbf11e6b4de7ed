"""Shared evaluation steps: diagnostics on known arrays, decisions with unavailable bars."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest

from himari_jax import config as config_lib
from himari_jax.inference import members
from himari_jax.stats import diagnostics


def test_diagnostics_known_confusion():
  # Labels S, H, H, B, B, B; predictions (argmax) S, H, B, B, B, H; one masked bar ignored.
  labels = np.array([0, 1, 1, 2, 2, 2, 0])
  preds = np.array([0, 1, 2, 2, 2, 1, 2])
  logits = np.eye(3)[preds] * 2.0
  mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
  out = diagnostics.diagnostics(logits, labels, mask)
  assert out['bars'] == 6
  assert out['confusion'] == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]
  assert out['accuracy'] == 4 / 6
  assert out['predicted_share'] == {'SELL': 1 / 6, 'HOLD': 2 / 6, 'BUY': 3 / 6}
  assert out['label_share'] == {'SELL': 1 / 6, 'HOLD': 2 / 6, 'BUY': 3 / 6}
  assert out['precision'] == {'SELL': 1.0, 'HOLD': 0.5, 'BUY': 2 / 3}
  assert out['recall'] == {'SELL': 1.0, 'HOLD': 0.5, 'BUY': 2 / 3}
  np.testing.assert_allclose(out['mean_logits_by_label']['BUY'], [0, 2 / 3, 4 / 3], atol=1e-4)
  assert not out['collapsed']


def test_diagnostics_flags_collapse_and_skips_unavailable():
  logits = np.tile([0.0, 3.0, 0.0], (100, 1))
  logits[:5] = [3.0, 0.0, 0.0]
  logits[-10:] = np.nan  # unavailable predictions are not counted
  labels = np.ones(100, int)
  out = diagnostics.diagnostics(logits, labels, np.ones(100, bool))
  assert out['bars'] == 90
  assert out['collapsed'] and out['collapsed_to'] == 'HOLD'
  assert out['precision']['BUY'] is None and out['recall']['SELL'] is None


def test_split_list():
  assert config_lib.split_list(' a, b ,,c ') == ['a', 'b', 'c']
  assert config_lib.split_list(('x', ' y')) == ['x', 'y']


@pytest.mark.slow
def test_decide_holds_where_a_member_is_unavailable(tiny_config, tmp_path):
  from himari_jax.data import ohlcv as data
  from himari_jax.training import train

  tiny_config.train.num_epochs = 1
  tiny_config.train.steps_per_epoch = 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  member = members.load_member(str(tmp_path))
  df = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:400]
  cal = ml_collections.ConfigDict({'mode': 'fit_rates', 'bias': (0.0, 0.0, 0.0),
                                   'temperature': True, 'num_bins': 10})
  decisions = members.decide_members([member, member], ['a', 'b'], df, strategy='voting',
                             threshold=0.0, weights=None, calibration_config=cal)
  first = ~decisions.available
  assert first[:100].all() and decisions.available[-100:].all()
  assert (decisions.actions[first] == 1).all() and (decisions.confidence[first] == 0).all()
  assert decisions.probs.shape == (2, 400, 3)
  assert set(decisions.calibrations[0]) >= {'bias', 'temperature', 'ece_before', 'ece_after'}
  # Two identical members agree, so voting equals either member's argmax after calibration.
  np.testing.assert_array_equal(decisions.actions[decisions.available],
                                decisions.probs[0][decisions.available].argmax(axis=1))

  # `unanimous` is the seed's name of `disagreement`.
  other = dataclasses.replace(member, params=jax.tree.map(lambda p: p * 1.5, member.params))
  decided = {s: members.decide_members([member, other], ['a', 'b'], df, strategy=s, threshold=0.0,
                               weights=None, calibration_config=cal)
             for s in ('unanimous', 'disagreement')}
  np.testing.assert_array_equal(decided['unanimous'].actions, decided['disagreement'].actions)
  np.testing.assert_array_equal(decided['unanimous'].confidence,
                                decided['disagreement'].confidence)


def _select_config(dataset):
  """The shipped model, 'select' over a small grid, few resamples: seconds, not minutes."""
  config = config_lib.load_config('backtest')
  config.checkpoints = 'checkpoints/small_a'
  config.dataset = str(dataset)
  config.policy.mode = 'select'
  config.policy.grid.update(entry='0.2,0.4', exit_gap='0,0.2', min_hold='0,24', cooldown='0',
                            sizing='fixed')
  config.significance.update(num_resamples=50, num_shuffles=20)
  config.policy.null_rotations = 10
  return config


@pytest.mark.slow
def test_select_never_looks_at_test_bars_and_reports_it(tmp_path):
  from himari_jax.backtest import evaluate
  from himari_jax.data import binance
  from himari_jax.data import ohlcv as data

  test = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:1200]
  rng = np.random.default_rng(0)
  shocked = test.copy()
  # Other test-period prices (a random walk on top): a policy chosen on test bars would move.
  scale = np.exp(np.cumsum(rng.normal(0, 0.01, len(test))))
  for column in ('open', 'high', 'low', 'close'):
    shocked[column] = test[column] * scale
  shocked['high'] = shocked[['open', 'high', 'low', 'close']].max(axis=1)
  shocked['low'] = shocked[['open', 'high', 'low', 'close']].min(axis=1)
  outcomes = []
  for name, frame in (('test', test), ('shocked', shocked)):
    path = tmp_path / f'{name}.csv'
    binance.write_canonical_csv(frame, path)
    outcomes.append(evaluate.backtest_pipeline(_select_config(path), str(tmp_path / name),
                                               log=lambda _: None))
  original, perturbed = outcomes
  assert original['policy'] == perturbed['policy']
  assert original['metrics'] != perturbed['metrics']  # the test bars did change
  policy = original['policy']
  assert policy['mode'] == 'select' and policy['num_trials'] == 2 * 2 * 2 + 4
  assert policy['validation']['last'] < str(test.index[0])
  results = json.loads((tmp_path / 'test' / 'backtest_results.json').read_text())
  assert results['policy'] == policy
  # The search is deflated on the validation bars it ran on; the test gets PSR(0), HAC.
  deflated = policy['selection']
  assert deflated['num_trials'] == policy['num_trials']
  assert deflated['num_bars'] == policy['validation']['bars']
  assert deflated['label'].startswith('selection: DSR of the validation winner (12 trials')
  assert 0 <= deflated['dsr'] <= 1
  sig = results['significance']
  assert sig['test_psr']['label'] == 'test: PSR(0), HAC s.e.'
  assert sig['test_psr']['num_observations'] == 1200
  rows = sig['test_comparisons']['rows']
  assert [r['name'] for r in rows] == ['selected policy', 'seed rule']
  assert rows[0]['traded'] and rows[0]['sharpe'] == pytest.approx(
      sig['test_psr']['sharpe'], rel=1e-6)
  assert all(r['p_holm'] >= r['p_value'] for r in rows)
  assert {'gross_sharpe', 'net_sharpe', 'commission', 'slippage', 'cost_drag_sharpe',
          'turnover_per_year', 'mean_holding_bars', 'trade_bar_share'} <= set(
              results['attribution']['values'])
  assert set(results['attribution']['intervals']) == {'gross_sharpe', 'net_sharpe'}
  assert [row['cost_multiplier'] for row in results['cost_sensitivity']][0] == 0.0
  assert results['significance']['shuffled_signal_gross']['p_value'] is not None
  assert 'lookahead_warning' not in results
  page = (tmp_path / 'test' / 'backtest_report.html').read_text()
  assert 'Where the returns go' in page and 'decision policy: select' in page
  assert 'selection: DSR of the validation winner' in page and 'test: PSR(0), HAC' in page
  assert 'minimum detectable Sharpe at 80% power' in page and 'Holm' in page
  assert sig['bootstrap']['block_rule'] == 'Politis-White' and '(Politis-White)' in page
  # The search's own null: the selection rerun on rotated validation probabilities.
  null = policy['null']
  assert null['rotations'] == 10 and 1 / 11 <= null['p_value'] <= 1
  assert sig['null_test']['winners'] == 10 and sig['null_test']['sharpe_mean'] is not None
  assert 'P(null winner &gt;= real winner)' in page and 'selection null on test' in page
  assert 'before costs' in page and 'cost sensitivity' in page
  table = pd.read_csv(tmp_path / 'test' / evaluate.POLICY_CSV)
  assert len(table) == policy['num_trials']


def test_policy_grid_and_fixed_policy_from_config():
  from himari_jax.backtest import evaluate, policy

  config = config_lib.load_config('backtest')
  grid = evaluate.selection_grid(config.policy)
  assert np.shape(grid.entry) == np.shape(policy.default_grid().entry)  # 484 policies
  config.policy.grid.update(entry='0.3', exit_gap='0,0.1', min_hold='6', sizing='vol_target')
  table = policy.policy_table(evaluate.selection_grid(config.policy))
  margin = table[table['signal'] == 'margin']
  assert len(margin) == 2 * 2 and set(margin['exit']) == {0.3, 0.2}
  assert set(margin['sizing']) == {'vol_target'} and set(margin['min_hold']) == {6}
  assert list(table[table['signal'] == 'argmax']['entry']) == [0.0, 0.4, 0.5, 0.6]
  # The seed rule at the configured threshold is always in the grid ('auto' compares to it).
  grid = evaluate.selection_grid(config.policy, 0.7)
  assert policy.policy_table(grid).iloc[evaluate.seed_rule_index(grid, 0.7)]['entry'] == 0.7
  config.policy.update(entry=0.2, exit=0.3)
  with pytest.raises(ValueError, match='exit must be <= entry'):
    evaluate.fixed_policy(config.policy)
  config.policy.update(exit=0.0, band=-0.1)
  with pytest.raises(ValueError, match='band'):
    evaluate.fixed_policy(config.policy)
  config.policy.mode = 'best'
  with pytest.raises(ValueError, match="policy.mode='best'"):
    evaluate.choose_policy(config)
  assert config.policy.nested_windows == 3
  config.policy.update(band=0.01, nested_windows=0)
  with pytest.raises(config_lib.ConfigError, match='--config.policy.nested_windows=0: must be '
                                                   '>= 1'):
    config_lib.check_ranges(config, config_lib.BACKTEST_RANGES)


def _selection(objective, index, seed_index=2):
  from himari_jax.backtest import policy

  table = pd.DataFrame({'objective': objective})
  return policy.PolicySelection(policy=None, index=index, objective='sharpe_lcb',
                                num_trials=len(table), table=table, trial_sharpes=None,
                                num_eligible=len(table))


def _null(winner_objective, seed_objective):
  from himari_jax.backtest import policy

  winner_objective = np.asarray(winner_objective, float)
  rotations = len(winner_objective)
  objective = np.stack([winner_objective, np.zeros(rotations), seed_objective], axis=1)
  return policy.SelectionNull(min_offset=336, offsets=np.full(rotations, 400),
                              winners=np.where(np.isfinite(winner_objective), 0, -1),
                              sharpe=winner_objective, objective=objective)


def test_auto_uses_the_selected_policy_only_past_the_null_bar():
  from himari_jax.backtest import policy_search

  real = _selection([1.0, 0.2, 0.0], index=0)  # margin over the seed rule (row 2): 1.0
  quiet = _null(np.linspace(-0.5, 0.5, 40), np.zeros(40))
  decided = policy_search.auto_decision(real, quiet, seed_index=2)
  assert decided['used_selected'] and decided['margin'] == 1.0
  assert decided['bar'] == pytest.approx(np.sort(np.linspace(-0.5, 0.5, 40))[38])
  # Noise alone beats the seed rule by more: the margin is what the search finds anyway.
  loud = _null(np.linspace(0.0, 2.0, 40), np.zeros(40))
  decided = policy_search.auto_decision(real, loud, seed_index=2)
  assert not decided['used_selected'] and 'using the seed rule' in decided['reason']
  # The same null margins with the seed rule doing as well in the null: the bar falls.
  matched = _null(np.linspace(0.0, 2.0, 40), np.linspace(0.0, 2.0, 40))
  assert policy_search.auto_decision(real, matched, seed_index=2)['used_selected']
  # A null whose reruns found nothing eligible sets no bar; without a null the bar is 0.
  empty = _null(np.full(40, np.nan), np.zeros(40))
  assert policy_search.auto_decision(real, empty, seed_index=2)['bar'] is None  # -inf
  assert policy_search.auto_decision(real, empty, seed_index=2)['used_selected']
  unseeded = _selection([0.5, 0.2, np.nan], index=0)  # a seed that never traded scores 0
  decided = policy_search.auto_decision(unseeded, None, seed_index=2)
  assert decided['margin'] == 0.5 and decided['bar'] == 0.0 and decided['used_selected']
  assert 'no selection null was run' in decided['rule']


def test_choose_policy_reports_its_rule_and_falls_back_to_the_seed_rule():
  from himari_jax.backtest import evaluate, policy
  from himari_jax.data import ohlcv as data

  frame = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:1500]
  closes = frame['close'].to_numpy()
  momentum = np.concatenate([np.zeros(24), closes[24:] / closes[:-24] - 1])
  logits = np.stack([-60 * momentum, np.full(len(closes), 0.3), 60 * momentum], axis=1)
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  config = _select_config('unused')
  config.policy.update(mode='auto', null_rotations=8, null_min_offset=200)
  lines = []
  choice = evaluate.choose_policy(config, frame, probs, log=lines.append)
  auto = choice.summary['auto']
  assert choice.mode == ('select' if auto['used_selected'] else 'seed')
  assert choice.summary['null']['rotations'] == 8 and choice.null.winners.shape == (8,)
  assert [line for line in lines if line.startswith('policy auto: ')] == [
      f'policy auto: {auto["reason"]}']
  # Nested over the default 3 windows; the selected policy stays on record either way.
  windows = choice.summary['windows']
  assert windows['label'] == ('selection: nested over 3 validation windows, worst-window '
                              'sharpe_lcb') == choice.summary['rule']
  assert len(windows['selected']) == len(windows['seed_rule']) == 3
  assert windows['selected_score'] == min(windows['selected'])
  assert windows['bars'][-1][1] == str(frame.index[-1])
  assert choice.selection.window_round_trips == 7  # ceil(20 / 3)
  assert any(line.startswith(windows['label'] + ': selected policy ') for line in lines)
  assert choice.summary['policy' if auto['used_selected'] else 'selected_policy'] == (
      policy.policy_to_dict(choice.selection.policy))
  assert choice.null.nested_windows == 3 and 'same nested rule over 3 windows' in (
      choice.summary['null']['label'])
  # No policy makes a million round trips: the seed rule, and one line that says why.
  config.policy.min_round_trips = 1_000_000
  lines = []
  choice = evaluate.choose_policy(config, frame, probs, log=lines.append)
  assert choice.mode == 'seed' and choice.policy is None
  assert lines == ['policy: no policy made 333334 round trips in each of 3 validation windows '
                   'with a defined sharpe_lcb: using the seed rule']
  config.policy.nested_windows = 1
  lines = []
  choice = evaluate.choose_policy(config, frame, probs, log=lines.append)
  assert lines == ['policy: no policy made 1000000 validation round trips with a defined '
                   'sharpe_lcb: using the seed rule']
  assert choice.summary['fallback'] in lines[0] and 'selection' not in choice.summary
  config.policy.nested_windows = 100  # windows of 15 bars
  with pytest.raises(ValueError, match='policy.nested_windows=100 splits 1500 validation bars'):
    evaluate.choose_policy(config, frame, probs, log=lambda _: None)
  config.policy.nested_windows = 1
  config.policy.update(min_round_trips=0, null_min_offset=800)  # 1,500 bars: too short
  choice = evaluate.choose_policy(config, frame, probs, log=lambda _: None)
  assert choice.null is None and 'cannot be rotated' in choice.summary['null']['note']
  assert 'no selection null was run' in choice.summary['auto']['rule']


def test_in_sample_overlaps_name_member_part_and_bars():
  import types

  index = pd.date_range('2024-01-01', periods=100, freq='h', tz='UTC')
  recorded = types.SimpleNamespace(meta={'data': {'files': [{
      'name': 'btc_2023', 'first': '2023-01-01 00:00:00+00:00',
      'last': '2024-01-01 19:00:00+00:00', 'train_first': '2023-01-01 00:00:00+00:00',
      'train_last': '2023-12-31 09:00:00+00:00', 'val_first': '2023-12-31 16:00:00+00:00',
      'val_last': '2024-01-01 19:00:00+00:00'}]}})
  older = types.SimpleNamespace(meta={'data': {'files': [{
      'name': 'btc_old', 'first': '2024-01-03 00:00:00+00:00',
      'last': '2024-06-01 00:00:00+00:00'}]}})
  converted = types.SimpleNamespace(meta={})
  overlaps, unknown = members.in_sample_overlaps([recorded, older, converted],
                                                 ['a', 'b', 'seed.pt'], index)
  assert unknown == ['seed.pt']
  assert [(o.member, o.part, o.bars) for o in overlaps] == [
      ('a', 'validation', 20), ('b', 'training file', 52)]
  assert overlaps[0].describe() == ('a used 20 of the backtest bars for validation (btc_2023, '
                                    '2024-01-01 00:00 .. 2024-01-01 19:00)')


def test_backtest_on_bars_a_member_saw_is_refused_unless_allowed(tmp_path):
  from himari_jax.backtest import evaluate
  from himari_jax.data import binance
  from himari_jax.data import ohlcv as data

  # The shipped model trained and validated on 2020-2024 (its run records the file's range).
  seen = data.builtin_dataset('btc_usdt_1h_2020_2024').iloc[-300:]
  path = tmp_path / 'late_2024.csv'
  binance.write_canonical_csv(seen, path)
  config = _select_config(path)
  config.policy.mode = 'seed'
  with pytest.raises(evaluate.InSampleError, match=(
      r'^in-sample backtest refused: checkpoints/small_a used 300 of the backtest bars for '
      r'training file \(btc_usdt_1h_2020_2024, 2024-12-19 12:00 .. 2024-12-31 23:00\)')):
    evaluate.backtest_pipeline(config, str(tmp_path / 'refused'), log=lambda _: None)
  assert not (tmp_path / 'refused').exists()
  config.allow_in_sample = True
  lines = []
  outcome = evaluate.backtest_pipeline(config, str(tmp_path / 'allowed'), log=lines.append)
  assert lines[0].startswith('IN-SAMPLE: these results are not out of sample: checkpoints/')
  assert outcome['warnings'][0] == lines[0]
  results = json.loads((tmp_path / 'allowed' / 'backtest_results.json').read_text())
  assert results['in_sample'] == lines[0] and 'lookahead_warning' not in results
  page = (tmp_path / 'allowed' / 'backtest_report.html').read_text()
  assert page.index('IN-SAMPLE') < page.index('<h1>')


def test_label_params_pass_each_rule_its_own_fields():
  from himari_jax.data import input_pipeline, labels

  config = config_lib.load_config('flag_trader:tiny')
  config.labels.update(kind='volatility', cost_floor=labels.round_trip_cost())
  assert input_pipeline.label_params(config.labels) == {
      'horizon': 6, 'k': 1.0, 'window': 168, 'cost_floor': 0.003}
  config.labels.kind = 'triple_barrier'
  assert set(input_pipeline.label_params(config.labels)) == {
      'horizon', 'k_up', 'k_down', 'window', 'cost_floor'}
  config.labels.kind = 'threshold'
  assert set(input_pipeline.label_params(config.labels)) == {'horizon', 'threshold',
                                                             'cost_floor'}
  config.labels.kind = 'sharpe'
  assert input_pipeline.label_params(config.labels) == {'cost_floor': 0.003}
  config.labels.kind = 'zigzag'
  with pytest.raises(ValueError, match='labels.kind'):
    input_pipeline.label_params(config.labels)
