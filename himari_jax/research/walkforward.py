"""Walk-forward evaluation: retrain per fold, test on the next bars, stitch one backtest.

The series is one asset's bars across eras (e.g. BTC 2017-08 .. 2026-04 from the three
bundled files), concatenated in time. `make_folds` cuts it into folds, each a training
window followed, `embargo` bars later, by a test window; test windows follow each other in
time. Per fold (`run_fold`):

1. the fold's bars (feature warm-up, training, embargo, validation) are written to
   `fold_<k>/train.csv` and `train.train_and_evaluate` trains on that file alone (from scratch,
   or with `per_fold='finetune'` starting from the previous fold's run);
2. the best checkpoint is calibrated on the fold's own validation split and scores the test
   bars from their trailing windows, computed from the bars before each of them
   (`members.decide_members` on the test window plus its warm-up and context);
3. actions and confidences of the test bars go to `fold_<k>/predictions.npz`, written last:
   a fold with that file is done and is skipped when the run is resumed.

The out-of-sample decisions of every fold, in time order, make one backtest
(`evaluate.backtest_and_report`: buy-and-hold, bootstrap error bars, reports); each fold's
test window is also backtested alone for the per-fold table (`folds.csv`).

Beside what each fold traded, the table and the report set the policy its search selected on
its validation bars (whether or not 'auto' traded it) against the seed rule on its test window
(`selection_vs_seed`: net Sharpe per fold, the mean difference and the pooled test bars). Under
'auto', a fold whose earlier folds' record says the selected policy trailed the seed rule (mean
difference < 0, `policy_search.auto_track_record`) trades the seed rule (`apply_track_record`):
the record of folds before it only, so the fallback is causal.

No fold trains on a bar at or after its test window: the training file ends `embargo` bars
before the test window starts, and labels are made from that file alone, so the last
training labels (whose future lies outside the file) are masked rather than read from the
test window.

Run folder:

  <workdir>/fold_000/   train.csv, checkpoints/, metrics.jsonl, tensorboard/ (a training
                        run), fold.json (ranges, validation metrics, calibration) and
                        predictions.npz (test-bar decisions)
  <workdir>/folds.csv   per-fold metrics, strategy and buy-and-hold on each test window, the
                        policy traded, and the seed rule's and the selected policy's net Sharpe
  <workdir>/backtest_*  reports of the stitched backtest (report.write_reports)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants, json_types
from himari_jax.backtest import decider as decider_lib
from himari_jax.backtest import engine as backtest_lib
from himari_jax.backtest import evaluate
from himari_jax.backtest import policy as policy_lib
from himari_jax.backtest import policy_search as search_lib
from himari_jax.backtest import report as report_lib
from himari_jax.data import binance, input_pipeline
from himari_jax.data import ohlcv as data_lib
from himari_jax.data import windows as windows_lib
from himari_jax.data.features import WARMUP_BARS
from himari_jax.inference import members as members_lib
from himari_jax.inference import predict as predict_lib
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.research import dispatch
from himari_jax.stats import metrics as metrics_lib
from himari_jax.stats import significance as significance_lib
from himari_jax.training import train as train_lib

WINDOW_MODES = ('rolling', 'expanding')
PER_FOLD = ('retrain', 'finetune')
TRAIN_FILE = 'train.csv'
FOLD_JSON = 'fold.json'
PREDICTIONS = 'predictions.npz'
FOLDS_CSV = 'folds.csv'


@dataclasses.dataclass(frozen=True)
class Fold:
  """Bar ranges [start, stop) of one fold, as indices into the whole series.

  Attributes:
    index: k, the fold's position in time order.
    data: the bars the fold's model is fitted from, its training file: `WARMUP_BARS` bars of
      feature history, then `train`, an embargo, then `val`.
    train: bars whose labels are trained on.
    val: validation bars (best checkpoint, calibration); `train.stop + embargo == val.start`.
    test: out-of-sample bars; `data.stop + embargo == test.start`.
  """

  index: int
  data: slice
  train: slice
  val: slice
  test: slice

  def to_dict(self) -> dict[str, int | list[int]]:
    return {'index': self.index,
            **{name: [getattr(self, name).start, getattr(self, name).stop]
               for name in ('data', 'train', 'val', 'test')}}


def make_folds(num_bars: int, *, train_bars: int, test_bars: int, step_bars: int | None = None,
               mode: str = 'rolling', embargo: int = 6, val_fraction: float = 0.15,
               first_test: int | None = None, end: int | None = None) -> list[Fold]:
  """Walk-forward folds over bars [0, num_bars): pure index arithmetic.

  Test windows start at `first_test`, `first_test + step_bars`, ... and hold `test_bars`
  bars each (the last one fewer if `end` cuts it). Each fold's training window, train plus
  validation, ends `embargo` bars before its test window; it holds the `train_bars` bars
  before that (`rolling`), or every bar from the first fold's start (`expanding`: the first
  fold has `train_bars`, later ones grow). `WARMUP_BARS` of feature history precede it.

  Args:
    num_bars: N, the length of the series.
    train_bars: bars of each (rolling) or the first (expanding) training window.
    test_bars: bars of each test window.
    step_bars: bars between consecutive test starts, >= test_bars (None: test_bars, so the
      test windows tile [first_test, end)).
    mode: 'rolling' or 'expanding'.
    embargo: bars left out between train and validation and between validation and test;
      the label horizon keeps labels from straddling a boundary.
    val_fraction: the last share of a fold's file held out for validation, as
      `input_pipeline.prepare_data` splits it (`windows.chronological_split`).
    first_test: the first test bar; None: the earliest with a full first training window.
    end: bars at or after it are not tested (None: N).

  Returns:
    The folds in time order.

  Raises:
    ValueError: on sizes that leave no fold or a training window before bar `WARMUP_BARS`.
  """
  step_bars = test_bars if step_bars is None else step_bars
  if mode not in WINDOW_MODES:
    raise ValueError(f'mode={mode!r}; use one of {", ".join(WINDOW_MODES)}')
  if train_bars < 1 or test_bars < 1 or embargo < 0:
    raise ValueError(f'train_bars={train_bars} and test_bars={test_bars} must be >= 1, '
                     f'embargo={embargo} >= 0')
  if step_bars < test_bars:
    raise ValueError(f'step_bars={step_bars} < test_bars={test_bars} would test bars twice; '
                     'use step_bars >= test_bars')
  end = num_bars if end is None else min(end, num_bars)
  first_start = WARMUP_BARS
  if first_test is None:
    first_test = first_start + train_bars + embargo
  elif first_test - embargo - train_bars < first_start:
    raise ValueError(
        f'the first test window starts at bar {first_test}, but its {train_bars} training '
        f'bars, {embargo} embargo bars and {WARMUP_BARS} feature warm-up bars need it to start '
        f'at bar {first_start + train_bars + embargo} or later: start testing later or use '
        'fewer train_bars')
  else:
    first_start = first_test - embargo - train_bars
  folds = []
  for k, test_start in enumerate(range(first_test, end, step_bars)):
    fit_stop = test_start - embargo
    start = fit_stop - train_bars if mode == 'rolling' else first_start
    data = slice(start - WARMUP_BARS, fit_stop)
    split = _fold_split(data.stop - data.start, val_fraction, embargo)
    folds.append(Fold(index=k, data=data,
                      train=slice(start, data.start + split.train.stop),
                      val=slice(data.start + split.val.start, fit_stop),
                      test=slice(test_start, min(test_start + test_bars, end))))
  if not folds:
    raise ValueError(f'no test window fits: the first would start at bar {first_test}, the '
                     f'series ends at bar {end}; use fewer train_bars or an earlier start')
  return folds


def _fold_split(num_bars: int, val_fraction: float, embargo: int) -> windows_lib.Split:
  """The train / validation split `input_pipeline.prepare_data` makes of a fold's file."""
  split = windows_lib.chronological_split(num_bars, val=val_fraction, embargo=embargo)
  if split.train.stop <= WARMUP_BARS or split.val.stop <= split.val.start:
    raise ValueError(f'a fold file of {num_bars} bars leaves no training or validation bars '
                     f'after {WARMUP_BARS} warm-up bars; use more train_bars')
  return split


# ------------------------------------------------------------------------------ data


def asset_datasets(asset: str) -> list[str]:
  """The bundled datasets of one asset in time order, e.g. 'btc' -> btc_usdt_1h_2017_2019, ..."""
  names = [n for n in data_lib.builtin_dataset_names() if n.startswith(f'{asset}_')]
  if not names:
    assets = sorted({n.split('_')[0] for n in data_lib.builtin_dataset_names()})
    raise data_lib.DataError(f'no bundled dataset for asset {asset!r}; bundled assets: '
                             f'{", ".join(assets)} (or set config.datasets to CSV paths)')
  return names  # names differ only in their years, so sorted by name is sorted by time


def load_series(spec: str | Sequence[str]) -> pd.DataFrame:
  """Several files of one asset, oldest first, as one gap-filled series.

  Raises:
    DataError: if the files overlap in time or are not listed oldest first.
  """
  frames = data_lib.load_datasets(spec, fill_gaps=True)
  df = pd.concat(frames)
  if not (df.index.is_monotonic_increasing and df.index.is_unique):
    raise data_lib.DataError(f'{spec}: the files overlap in time or are out of order; list '
                             'them oldest first, each starting after the previous one ends')
  return data_lib.fill_missing_bars(df, source=str(spec))


def first_bar_at(index: pd.DatetimeIndex, date: str) -> int:
  """Position in `index` of the first bar at or after `date` (naive dates are UTC); len(index)
  when every bar is before it."""
  when = pd.Timestamp(date)
  when = when.tz_localize('UTC') if when.tzinfo is None else when.tz_convert('UTC')
  return int(index.searchsorted(when, side='left'))


def folds_for(config: ml_collections.ConfigDict, df: pd.DataFrame) -> list[Fold]:
  """`make_folds` with the sizes and dates of a `configs/walk_forward.py` config."""
  embargo = input_pipeline.embargo_bars(config)
  return make_folds(
      len(df), train_bars=config.train_bars, test_bars=config.test_bars,
      step_bars=config.step_bars or None, mode=config.mode, embargo=embargo,
      val_fraction=config.data.val_fraction,
      first_test=first_bar_at(df.index, config.test_start) if config.test_start else None,
      end=first_bar_at(df.index, config.test_end) if config.test_end else None)


# ----------------------------------------------------------------------------- folds


@dataclasses.dataclass(frozen=True)
class FoldResult:
  """A finished fold: its record (fold.json) and decisions on its test bars, each (n_test,)."""

  fold: Fold
  record: dict
  actions: np.ndarray
  confidence: np.ndarray
  available: np.ndarray
  probs: np.ndarray  # (n_test, 3) calibrated probabilities

  @property
  def policy(self) -> policy_lib.PolicyParams | None:
    """The fold's decision policy; None: the seed's decisions (argmax + threshold)."""
    summary = self.record.get('policy') or {'mode': 'seed'}
    if summary['mode'] == 'seed':
      return None
    return policy_lib.make_policy(**summary['policy'])


def fold_training_config(config: ml_collections.ConfigDict, train_file: str,
                         init_from: str) -> ml_collections.ConfigDict:
  """The training config of one fold: the walk-forward config on the fold's file."""
  fold_config = config.copy_and_resolve_references()
  fold_config.data.train = train_file
  fold_config.data.max_bars = None  # the file holds exactly the fold's bars
  fold_config.train.init_from = init_from
  return fold_config


def run_fold(config: ml_collections.ConfigDict, df: pd.DataFrame, fold: Fold, fold_dir: str, *,
             init_from: str = '') -> FoldResult:
  """Trains, calibrates and predicts one fold, or reads it back when it is done already.

  Args:
    config: a `configs/walk_forward.py` config.
    df: the whole series the fold's indices refer to.
    fold: the fold.
    fold_dir: its folder; a training run that stopped part-way resumes there.
    init_from: training run to start from ('' = `config.train.init_from`).

  Raises:
    ValueError: if `fold_dir` holds a finished fold with other bar ranges (another config).
  """
  predictions_path = os.path.join(fold_dir, PREDICTIONS)
  if os.path.exists(predictions_path):
    with open(os.path.join(fold_dir, FOLD_JSON)) as f:
      record = json.load(f)
    if record['fold'] != fold.to_dict():
      raise ValueError(f'{fold_dir} holds fold {record["fold"]}, not {fold.to_dict()}: it was '
                       'made with other walk-forward settings; use another --workdir')
    settings = record.get('policy_settings')
    # A fold without recorded settings was decided by the seed's rule (or by its 'policy').
    seed_before = settings is None and (record.get('policy') or {'mode': 'seed'})['mode'] == 'seed'
    if settings != _policy_settings(config.backtest) and not (
        seed_before and config.backtest.policy.mode == 'seed'):
      # Other policy settings than the fold was decided with: choose again on its validation
      # bars; the model and its test-bar probabilities stay.
      member = members_lib.load_member(fold_dir, config.backtest.which)
      fitted = [members_lib.fit_member_calibration(member, config.backtest.calibration)]
      record.update(choose_fold_policy(config.backtest, member, fitted, fold_dir))
      with open(os.path.join(fold_dir, FOLD_JSON), 'w') as f:
        json.dump(record, f, indent=1)
    with np.load(predictions_path) as saved:
      return FoldResult(fold=fold, record=record, actions=saved['actions'],
                        confidence=saved['confidence'], available=saved['available'],
                        probs=saved['probs'])

  os.makedirs(fold_dir, exist_ok=True)
  train_file = os.path.join(fold_dir, TRAIN_FILE)
  binance.write_canonical_csv(df.iloc[fold.data], train_file)
  fold_config = fold_training_config(config, train_file,
                                     init_from or config.train.init_from)
  resumed = os.path.isdir(os.path.join(fold_dir, checkpoint_lib.CHECKPOINT_SUBDIR))
  tick = time.time()
  train_lib.train_and_evaluate(fold_config, fold_dir)
  train_seconds = None if resumed else time.time() - tick  # a resumed run's would be partial
  bt = config.backtest
  member = members_lib.load_member(fold_dir, bt.which)
  # The test bars, preceded by the warm-up and context their first window reads.
  lead = predict_lib.first_available_bar(int(fold_config.train.context_length))
  window = df.iloc[max(0, fold.test.start - lead):fold.test.stop]
  fitted = [members_lib.fit_member_calibration(member, bt.calibration)]
  decisions = members_lib.decide_members([member], [fold_dir], window, strategy=bt.strategy,
                                 threshold=bt.confidence_threshold, weights=None,
                                 calibration_config=bt.calibration, fitted=fitted)
  num_test = fold.test.stop - fold.test.start
  epoch = member.meta.get('epoch_metrics', {})
  record = {
      'fold': fold.to_dict(),
      'dates': {name: [str(df.index[part.start]), str(df.index[part.stop - 1])]
                for name, part in (('data', fold.data), ('train', fold.train),
                                   ('val', fold.val), ('test', fold.test))},
      'init_from': fold_config.train.init_from,
      'best_step': member.step,
      'validation': {k: epoch.get(k) for k in ('val_loss', 'val_nll', 'val_accuracy',
                                               'val_balanced_accuracy')},
      'calibration': decisions.calibrations[0],
      **choose_fold_policy(bt, member, fitted, fold_dir),
      'train_seconds': train_seconds,
  }
  with open(os.path.join(fold_dir, FOLD_JSON), 'w') as f:
    json.dump(record, f, indent=1)
  result = FoldResult(fold=fold, record=record, actions=decisions.actions[-num_test:],
                      confidence=decisions.confidence[-num_test:],
                      available=decisions.available[-num_test:],
                      probs=decisions.probs[0, -num_test:])
  # Written last, then renamed into place: its presence marks the fold as done.
  partial = os.path.join(fold_dir, 'predictions.partial.npz')
  np.savez(partial, actions=result.actions, confidence=result.confidence,
           available=result.available, probs=decisions.probs[0, -num_test:],
           time=df.index[fold.test].asi8)
  os.replace(partial, predictions_path)
  return result


def _describe(policy: dict | str) -> str:
  """A fold's policy in a few words (a seed summary is a string already)."""
  if isinstance(policy, str):
    return policy
  return (f'{policy["signal"]} {policy["entry"]:g}/{policy["exit"]:g}, hold '
          f'{policy["min_hold"]}, cooldown {policy["cooldown"]}, {policy["sizing"]}')


def _policy_settings(config: ml_collections.ConfigDict) -> dict:
  """`config.policy` of a backtest config as it reads back from fold.json."""
  return json.loads(json.dumps(config.policy.to_dict()))


def choose_fold_policy(config: ml_collections.ConfigDict, member: checkpoint_lib.LoadedModel,
                       fitted: Sequence, fold_dir: str) -> dict:
  """The fold's decision policy, chosen on its own validation bars (never its test bars).

  Args:
    config: the walk-forward config's `backtest` section.
    member: the fold's model; fitted: its `members.fit_member_calibration` output, in a list.

  Returns:
    fold.json fields: `policy_settings` and `policy` (`evaluate.PolicyChoice.summary`; with a
    selection, its `selection` entry is the validation winner's deflated Sharpe ratio over
    every policy tried on the fold's validation bars).
  """
  val = ((None, None) if config.policy.mode not in ('select', 'auto') else
         evaluate.validation_probabilities([member], config.calibration, fitted))
  choice = evaluate.choose_policy(config, *val, log=lambda _: None)
  if choice.selection is not None:
    choice.selection.table.to_csv(os.path.join(fold_dir, evaluate.POLICY_CSV), index=False)
  return {'policy_settings': _policy_settings(config), 'policy': choice.summary}


# ------------------------------------------------------------------------- evaluation


def fold_metrics(df: pd.DataFrame, result: FoldResult,
                 config: ml_collections.ConfigDict) -> tuple[dict, dict]:
  """Metrics of the strategy and of buy-and-hold on the fold's test window alone."""
  test_df = df.iloc[result.fold.test]
  params = backtest_lib.params_from_config(config)
  market = metrics_lib.market_returns(np.asarray(test_df['close'], np.float64))
  kwargs = dict(periods_per_year=config.periods_per_year, risk_free_rate=config.risk_free_rate)
  strategy = run_fold_backtest(test_df, result, config, params)
  benchmark = backtest_lib.buy_and_hold(test_df, params)
  return tuple(report_lib.to_python(metrics_lib.compute_metrics(
      run, market, params.initial_capital, **kwargs)) for run in (strategy, benchmark))


def run_fold_backtest(test_df: pd.DataFrame, result: FoldResult,
                      config: ml_collections.ConfigDict,
                      params: backtest_lib.BacktestParams) -> backtest_lib.BacktestResult:
  """The fold's test window backtested alone with its policy (or the seed's decisions)."""
  decider = dataclasses.replace(decider_lib.Decider.from_config(config, result.policy),
                                params=params)
  return decider.trade(test_df, actions=result.actions, confidence=result.confidence,
                       probs=result.probs)[0]


def chained_backtest(df: pd.DataFrame, span: slice, results: Sequence[FoldResult],
                     config: ml_collections.ConfigDict) -> backtest_lib.BacktestResult:
  """The stitched test bars as one backtest when folds trade different policies.

  Each fold's policy runs on its own test window from flat, with the equity the previous
  window ended with; bars between windows stay flat. A position still open at a window's
  end is marked at that bar's close and not charged an exit, so costs are slightly
  understated (by at most one exit per fold).
  """
  params = backtest_lib.params_from_config(config)
  capital = float(params.initial_capital)
  parts, cursor = [], span.start
  segments = []
  for result in results:
    if result.fold.test.start > cursor:
      segments.append((slice(cursor, result.fold.test.start), None))
    segments.append((result.fold.test, result))
    cursor = result.fold.test.stop
  for bars, result in segments:
    part_df = df.iloc[bars]
    part_params = dataclasses.replace(params, initial_capital=np.asarray(
        capital, np.asarray(params.initial_capital).dtype))
    if result is None:
      hold = np.full(len(part_df), constants.HOLD, np.int32)
      run = backtest_lib.run_backtest(part_df, hold, np.zeros(len(part_df)), part_params)
    else:
      run = run_fold_backtest(part_df, result, config, part_params)
    parts.append(run)
    capital = float(np.asarray(run.equity)[-1])
  return backtest_lib.BacktestResult(*(np.concatenate([np.asarray(getattr(p, f.name))
                                                        for p in parts])
                                       for f in dataclasses.fields(parts[0])))


def selected_policy(record: dict) -> policy_lib.PolicyParams | None:
  """The policy a fold's search selected on its validation bars, whether or not the fold
  traded it ('auto' may have kept the seed rule); None without a search or an eligible
  policy."""
  summary = record.get('policy') or {'mode': 'seed'}
  if summary['mode'] == 'select':
    return policy_lib.make_policy(**summary['policy'])
  if summary.get('selected_policy'):
    return policy_lib.make_policy(**summary['selected_policy'])
  return None


def _test_returns(test_df: pd.DataFrame, result: FoldResult,
                  policy: policy_lib.PolicyParams | None, config: ml_collections.ConfigDict,
                  params: backtest_lib.BacktestParams) -> np.ndarray:
  """(n_test,) net per-bar returns of `policy` (None: the seed rule) on the fold's test bars
  alone, from flat."""
  decider = dataclasses.replace(decider_lib.Decider.from_config(config, policy), params=params)
  run = decider.trade(test_df, actions=result.actions, confidence=result.confidence,
                      probs=result.probs)[0]
  return np.asarray(metrics_lib.period_returns(run.equity, params.initial_capital), np.float64)


def _net_sharpe(returns: np.ndarray, periods_per_year: float) -> float:
  """Annualised Sharpe ratio (risk-free 0); 0 for a book that never moved (never traded),
  as `policy_search.auto_decision` scores a flat book."""
  if len(returns) < 2 or not np.std(returns) > 0:
    return 0.0
  return significance_lib.sharpe_ratio(returns, periods_per_year)


def selection_vs_seed(df: pd.DataFrame, results: Sequence[FoldResult],
                      config: ml_collections.ConfigDict) -> dict:
  """The seed rule and the policy each fold's search selected (traded or not), side by
  side on each fold's test window: did selection help out of sample?

  Args:
    df: the whole series; results: the folds, in time order; config: the backtest section.

  Returns:
    {'label', 'folds': [{'fold', 'seed_sharpe', 'selected_sharpe', 'difference' (selected -
    seed; NaN where the fold's search selected nothing)}], 'mean_difference' (over the folds
    with a difference; NaN without), 'pooled': the same Sharpe ratios of the test bars of
    those folds together ({'folds', 'bars', 'seed_sharpe', 'selected_sharpe',
    'difference'}), 'track_record': `policy_search.auto_track_record` of every fold}. Net
    Sharpe ratios, annualised, risk-free 0, each window traded alone from flat.
  """
  params = backtest_lib.params_from_config(config)
  ppy = config.periods_per_year
  rows, pooled_seed, pooled_selected = [], [], []
  for result in results:
    test_df = df.iloc[result.fold.test]
    seed = _test_returns(test_df, result, None, config, params)
    policy = selected_policy(result.record)
    selected = None if policy is None else _test_returns(test_df, result, policy, config,
                                                          params)
    seed_sharpe = _net_sharpe(seed, ppy)
    selected_sharpe = np.nan if selected is None else _net_sharpe(selected, ppy)
    rows.append({'fold': result.fold.index, 'seed_sharpe': seed_sharpe,
                 'selected_sharpe': selected_sharpe,
                 'difference': selected_sharpe - seed_sharpe})
    if selected is not None:
      pooled_seed.append(seed)
      pooled_selected.append(selected)
  differences = np.array([row['difference'] for row in rows], np.float64)
  pooled = {'folds': len(pooled_seed), 'bars': int(sum(len(r) for r in pooled_seed)),
            'seed_sharpe': np.nan, 'selected_sharpe': np.nan, 'difference': np.nan}
  if pooled_seed:
    pooled.update(seed_sharpe=_net_sharpe(np.concatenate(pooled_seed), ppy),
                  selected_sharpe=_net_sharpe(np.concatenate(pooled_selected), ppy))
    pooled['difference'] = pooled['selected_sharpe'] - pooled['seed_sharpe']
  return {'label': 'selected policy vs seed rule on each fold\'s test window (net Sharpe, '
                   'each window alone from flat)',
          'folds': rows,
          'mean_difference': (float(np.nanmean(differences)) if np.isfinite(differences).any()
                              else np.nan),
          'pooled': pooled, 'track_record': search_lib.auto_track_record(differences)}


def apply_track_record(results: Sequence[FoldResult], differences: Sequence[float],
                       config: ml_collections.ConfigDict) -> tuple[list[FoldResult], list[dict]]:
  """'auto' falls back to the seed rule after a trailing record, causally: fold i trades
  the seed rule when the selected policy trailed it on the test windows of folds 0..i-1
  (`policy_search.auto_track_record`); other modes are left as chosen.

  Args:
    results: the folds, in time order, as each chose on its validation bars.
    differences: per fold, selected - seed net test Sharpe (`selection_vs_seed`).
    config: the backtest section (`policy.mode`, the seed rule's threshold and sizing).

  Returns:
    (the folds, those overruled with a seed policy summary that keeps what the search chose
    under `selected_policy` and says why under `track_record`; each fold's record as it read
    it).
  """
  decided, records = [], []
  for i, result in enumerate(results):
    record = search_lib.auto_track_record(differences[:i])
    records.append(record)
    summary = result.record.get('policy') or {'mode': 'seed'}
    if config.policy.mode == 'auto' and record['trails'] and summary['mode'] != 'seed':
      summary = {**summary, 'mode': 'seed', 'selected_policy': summary['policy'],
                 'policy': f'argmax + confidence_threshold {config.confidence_threshold:g}, '
                           f'sizing {config.sizing}',
                 'track_record': record['line']}
      result = dataclasses.replace(result, record={**result.record, 'policy': summary})
    decided.append(result)
  return decided, records


def _fold_row(result: FoldResult, metrics: dict, benchmark: dict,
              versus: dict | None = None) -> dict:
  """One line of the per-fold table; `versus`: the fold's `selection_vs_seed` row."""
  dates, validation = result.record['dates'], result.record['validation']
  return {
      'fold': result.fold.index,
      'train_from': dates['train'][0][:16], 'train_to': dates['val'][1][:16],
      'test_from': dates['test'][0][:16], 'test_to': dates['test'][1][:16],
      'test_bars': result.fold.test.stop - result.fold.test.start,
      'val_loss': validation['val_loss'],
      'val_bal_acc': validation['val_balanced_accuracy'],
      **{k: metrics[k] for k in ('total_return', 'sharpe', 'max_drawdown', 'num_trades',
                                 'exposure')},
      **{f'bh_{k}': benchmark[k] for k in ('total_return', 'sharpe', 'max_drawdown')},
      'traded': (result.record.get('policy') or {'mode': 'seed'})['mode'],
      **({} if versus is None else {
          'seed_sharpe': versus['seed_sharpe'], 'selected_sharpe': versus['selected_sharpe'],
          'selected_minus_seed': versus['difference']}),
  }


def _run_fold_trial(trial: tuple) -> str:
  """One fold as a `dispatch.run_trials` trial: trains it and writes its files; its folder."""
  config, df, fold, fold_dir = trial
  run_fold(config, df, fold, fold_dir)
  return fold_dir


def run_walk_forward(config: ml_collections.ConfigDict, workdir: str, *,
                     ray_address: str | None = None,
                     log: Callable[[str], None] = print) -> dict:
  """Every fold (resuming a previous run in `workdir`), then the stitched backtest.

  Args:
    config: a `configs/walk_forward.py` config.
    workdir: the run folder (fold folders, per-fold table and reports); with `ray_address`
      on storage every Ray node sees under the same path.
    ray_address: None trains the folds here, one after another; otherwise the folds not
      done yet train as Ray tasks on that cluster (`dispatch.run_trials`, one fold per GPU),
      each writing its fold folder as in-process, and the finished folds are then read back
      here. Needs `per_fold='retrain'` (a fine-tuned fold starts from the previous one).
    log: where progress lines go.

  Returns:
    {'folds': per-fold DataFrame, 'metrics', 'benchmark' (stitched test bars),
     'significance', 'paths'}.
  """
  if config.per_fold not in PER_FOLD:
    raise ValueError(f'per_fold={config.per_fold!r}; use one of {", ".join(PER_FOLD)}')
  if ray_address is not None and config.per_fold != 'retrain':
    raise ValueError(f'per_fold={config.per_fold!r} chains each fold to the previous one, so '
                     'its folds cannot train in parallel on Ray: use per_fold=retrain or no '
                     'ray_address')
  config_lib.check_ranges(config, config_lib.WALK_FORWARD_RANGES)
  config_lib.check_ranges(config.backtest, config_lib.BACKTEST_RANGES,
                          prefix='--config.backtest.')
  backtest_lib.params_from_config(config.backtest)  # validates costs and sizing up front
  workdir = os.path.abspath(workdir)
  spec = config.datasets or ','.join(asset_datasets(config.asset))
  df = load_series(spec)
  folds = folds_for(config, df)
  log(f'{spec}: {len(df)} bars ({df.index[0]:%Y-%m-%d} .. {df.index[-1]:%Y-%m-%d}); '
      f'{len(folds)} {config.mode} folds, testing {df.index[folds[0].test.start]:%Y-%m-%d} .. '
      f'{df.index[folds[-1].test.stop - 1]:%Y-%m-%d}; {config.per_fold} per fold')

  when = lambda bar: f'{df.index[bar]:%Y-%m-%d %H:%M}'
  fold_dirs = [os.path.join(workdir, f'fold_{fold.index:03d}') for fold in folds]
  if ray_address is not None:
    # Only the unfinished folds go to Ray; the loop below then reads every fold back.
    todo = [(config, df, fold, fold_dir) for fold, fold_dir in zip(folds, fold_dirs, strict=True)
            if not os.path.exists(os.path.join(fold_dir, PREDICTIONS))]
    log(f'training {len(todo)} of {len(folds)} folds on Ray at {ray_address}')
    dispatch.run_trials(_run_fold_trial, todo, ray_address)
  results, previous = [], ''
  for fold, fold_dir in zip(folds, fold_dirs, strict=True):
    done = os.path.exists(os.path.join(fold_dir, PREDICTIONS))
    log(f'fold {fold.index + 1}/{len(folds)}: train {when(fold.train.start)} .. '
        f'{when(fold.val.stop - 1)}, test {when(fold.test.start)} .. '
        f'{when(fold.test.stop - 1)}' + (' (done, skipped)' if done else ''))
    init_from = previous if config.per_fold == 'finetune' else ''
    results.append(run_fold(config, df, fold, fold_dir, init_from=init_from))
    previous = fold_dir

  bt = config.backtest
  # Every fold's selected policy and the seed rule on its test window; under 'auto' a fold
  # after a trailing record of the folds before it trades the seed rule.
  versus = selection_vs_seed(df, results, bt)
  results, records = apply_track_record(
      results, [row['difference'] for row in versus['folds']], bt)
  rows, details = [], []
  for result, row, record in zip(results, versus['folds'], records, strict=True):
    metrics, benchmark = fold_metrics(df, result, bt)
    rows.append(_fold_row(result, metrics, benchmark, row))
    details.append({**result.record, 'metrics': metrics, 'benchmark': benchmark,
                    'selection_vs_seed': json_types.to_json_types(row, finite_only=True),
                    'track_record_before': record})
  log(versus['track_record']['line'])
  table = pd.DataFrame(rows)
  os.makedirs(workdir, exist_ok=True)
  table.to_csv(os.path.join(workdir, FOLDS_CSV), index=False)

  # Bars between test windows (step_bars > test_bars) have no decision: the position is held.
  span = slice(folds[0].test.start, folds[-1].test.stop)
  actions = np.full(span.stop - span.start, constants.HOLD, np.int32)
  confidence = np.zeros(span.stop - span.start, np.float32)
  available = np.zeros(span.stop - span.start, bool)
  for result in results:
    part = slice(result.fold.test.start - span.start, result.fold.test.stop - span.start)
    actions[part], confidence[part] = result.actions, result.confidence
    available[part] = result.available
  extra = {'walk_forward': {'series': spec, 'num_folds': len(folds),
                            'config': config.copy_and_resolve_references().to_dict()},
           'folds': details, 'available_bars': int(available.sum()),
           'selection_vs_seed': json_types.to_json_types(versus, finite_only=True)}
  log(f'stitched backtest of {len(actions)} out-of-sample bars')
  chained = None
  if any(result.policy is not None for result in results):
    chained = chained_backtest(df, span, results, bt)
  summaries = [result.record.get('policy') or {'mode': 'seed', 'num_trials': 1}
               for result in results]
  modes = sorted({s['mode'] for s in summaries})
  summary = {'mode': f'{bt.policy.mode} per fold: ' + ', '.join(modes),
             'num_trials': max(s['num_trials'] for s in summaries),
             'policy': '; '.join(f'fold {r.fold.index}: {_describe(s["policy"])}'
                                 for r, s in zip(results, summaries, strict=True)
                                 if 'policy' in s) or 'seed'}
  # Each fold's search is judged on its own validation bars, where it ran.
  searches = {r.fold.index: {k: s[k] for k in ('windows', 'selection', 'null') if k in s}
              for r, s in zip(results, summaries, strict=True) if 'selection' in s}
  if searches:
    summary['folds'] = searches
  choice = evaluate.PolicyChoice('+'.join(modes), None, None, summary)
  outcome = evaluate.backtest_and_report(df.iloc[span], actions, confidence, bt, workdir,
                                         extra=extra, result=chained, choice=choice)
  outcome['paths']['folds'] = os.path.join(workdir, FOLDS_CSV)
  return {'folds': table, 'selection_vs_seed': versus, **outcome}


def print_walk_forward_summary(outcome: dict) -> None:
  """Console summary: per-fold table, stitched metrics vs buy-and-hold, luck, files."""
  table = outcome['folds']
  print('\nper fold (test windows alone; bh_ = buy & hold):')
  print(table.to_string(index=False, float_format=lambda v: f'{v:.4g}'))
  sharpes = table['sharpe'].to_numpy(float)
  beats = int(np.sum(sharpes > table['bh_sharpe'].to_numpy(float)))
  print(f'fold Sharpe: mean {np.nanmean(sharpes):.3f}, std {np.nanstd(sharpes):.3f}, '
        f'positive in {int(np.sum(sharpes > 0))}/{len(table)} folds, above buy & hold in '
        f'{beats}/{len(table)}')
  for line in selection_vs_seed_lines(outcome.get('selection_vs_seed')):
    print(line)
  print('\nstitched out-of-sample backtest (every test window, in time order):')
  report_lib.print_metrics_table(outcome['metrics'], outcome['benchmark'])
  print()
  for line in report_lib.policy_lines(outcome.get('policy')):
    print(f'  {line}')
  attribution = outcome.get('attribution')
  if attribution:
    for line in report_lib.attribution_lines(attribution['values'], attribution['intervals']):
      print(f'  {line}')
  for line in report_lib.significance_lines(outcome['significance']):
    print(f'  {line}')
  print('\nwrote:')
  for name, path in outcome['paths'].items():
    print(f'  {name:>9}: {path}')


def selection_vs_seed_lines(versus: dict | None) -> list[str]:
  """`selection_vs_seed` for the console: one line per fold, the mean and pooled difference,
  and the track record ('auto falls back to the seed rule: ...' when the selection trails)."""
  if not versus:
    return []
  num = lambda v: 'n/a' if v is None or not np.isfinite(v) else f'{v:+.2f}'  # noqa: E731
  lines = [f'\n{versus["label"]}:']
  for row in versus['folds']:
    lines.append(f'  fold {row["fold"]}: seed rule {num(row["seed_sharpe"])}, selected '
                 f'{num(row["selected_sharpe"])}, selected - seed {num(row["difference"])}')
  pooled = versus['pooled']
  lines.append(f'  mean over folds of selected - seed: {num(versus["mean_difference"])}; '
               f'pooled over the {pooled["folds"]} folds\' {pooled["bars"]} test bars: seed '
               f'rule {num(pooled["seed_sharpe"])}, selected {num(pooled["selected_sharpe"])}, '
               f'selected - seed {num(pooled["difference"])}')
  lines.append(f'  {versus["track_record"]["line"]}')
  return lines
