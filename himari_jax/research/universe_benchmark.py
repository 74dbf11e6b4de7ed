"""Walk-forward benchmark on a universe of coins (SPEC 10 and 12).

  run_universe_benchmark(benchmark_config('universe_smoke'), 'runs/u')

1. The panel (`universe.load_universe` of `config.data.universe`) and every coin's features
   (`market_features.panel_features` for 'himari_market': causal, so computed once on the
   whole panel and sliced per fold).
2. Folds (`plan_folds`): test windows of `folds.test_months` from `folds.test_start`; each
   trains on the preceding `folds.train_months` of every coin listed then (bars on at least
   `folds.min_listed` of the window) and tests those coins.
3. Per fold, one pooled training set (`input_pipeline.prepare_data` on the coins' frames: one
   normaliser per coin from its training rows, one calendar split into train | embargo |
   validation, the frames ending an embargo before the test window so no label reads a test
   bar).
4. Per (model, fold, seed), one trial: the model is fitted on every coin's training rows
   (`baselines.make_baseline`), scores every coin, is calibrated on the pooled validation
   rows and decides as the single-asset benchmark does (`baselines.calibrate_and_decide`).
   Baselines fit every training row (a coin with more bars weighs more); a FLAG-TRADER
   (`config.flag_traders`) trains on the same prepared rows with batches that draw every
   coin equally often (`config.train.sampling`, 'assets' for a universe).
   The rules `reversal` and `momentum` score a coin by minus / plus its trailing
   `baselines.lookback`-bar return and are long when that score is positive.
   On the test window: cross-sectional IC and rank IC with Newey-West t and per-coin IC
   (stats/cross_section) of the score `p_buy - p_sell` (the rules' return); a per-coin timing
   portfolio (long `portfolio.timing_position` of the coin's sleeve on BUY, flat on SELL) and
   a dollar-neutral long-short top-k portfolio of the score (backtest/portfolio), net of the
   costs of `config.backtest` and a shorting rate.

Outputs in the workdir: `results.jsonl` (one line per trial; a rerun skips finished trials),
`trials/<model>/fold_NNN/seed_S/series.npz` (per-bar rank IC and net returns, for the
report), `benchmarks/fold_NNN.npz` (equal-weight and BTC buy-and-hold net returns),
`universe_benchmark.md` (per model: mean rank IC with its Newey-West t over every test bar,
long-short and timing net Sharpe of the folds' returns joined in time; the benchmarks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from himari_jax import config as config_lib
from himari_jax import constants, json_types
from himari_jax.backtest import policy as policy_lib
from himari_jax.backtest import portfolio as portfolio_lib
from himari_jax.data import features as features_lib
from himari_jax.data import input_pipeline, market_features
from himari_jax.data import universe as universe_lib
from himari_jax.research import baselines as baselines_lib
from himari_jax.research import dispatch, universe_report
from himari_jax.research.benchmark_folds import format_seconds
from himari_jax.research.universe_report import (
  BENCHMARKS,
  CONSTANT_SCORES,
  RULES,
  SERIES,
  num_seeds,
  split_model,
  trial_dir,
)
from himari_jax.stats import cross_section
from himari_jax.stats import metrics as metrics_lib
from himari_jax.training import train as train_lib

RESULTS = 'results.jsonl'
# The fields of `config.backtest` a trial reads (costs, fills, annualisation, the threshold of
# the seed rule); with `calibration`, what its settings hash covers.
BACKTEST_FIELDS = ('initial_capital', 'commission', 'slippage', 'commission_sell',
                   'slippage_sell', 'fill', 'periods_per_year', 'confidence_threshold')
# Models whose probabilities are not fitted to the labels: used as given, not calibrated.
UNCALIBRATED = RULES + ('buy_and_hold',)


@dataclasses.dataclass(frozen=True)
class UniverseFold:
  """One walk-forward fold: train on [train_start, test_start) (validation and embargo at
  its end), test on [test_start, test_end); `symbols` the coins it trains and tests."""

  index: int
  train_start: pd.Timestamp
  test_start: pd.Timestamp
  test_end: pd.Timestamp
  symbols: tuple[str, ...]

  def to_dict(self) -> dict[str, Any]:
    return {'train_start': str(self.train_start), 'test_start': str(self.test_start),
            'test_end': str(self.test_end), 'symbols': list(self.symbols)}


def _utc(value: str) -> pd.Timestamp:
  stamp = pd.Timestamp(value)
  return stamp.tz_localize('UTC') if stamp.tzinfo is None else stamp.tz_convert('UTC')


def plan_folds(panel: universe_lib.Panel, config: ml_collections.ConfigDict
               ) -> list[UniverseFold]:
  """The folds of `config.folds` on `panel` (see the module docstring).

  Raises:
    ConfigError: no fold fits the panel, or a fold has fewer than 3 coins.
  """
  f = config.folds
  start, end = _utc(f.test_start), min(_utc(f.test_end), panel.index[-1] + panel.freq)
  folds: list[UniverseFold] = []
  test_start = start
  while test_start < end and (not f.max_folds or len(folds) < f.max_folds):
    test_end = min(test_start + pd.DateOffset(months=f.test_months), end)
    train_start = test_start - pd.DateOffset(months=f.train_months)
    if train_start < panel.index[0]:
      raise config_lib.ConfigError(
          f'config.folds: the fold testing from {test_start:%Y-%m-%d} trains from '
          f'{train_start:%Y-%m-%d}, before the panel starts ({panel.index[0]:%Y-%m-%d}); set '
          'a later folds.test_start or fewer folds.train_months')
    train = (panel.index >= train_start) & (panel.index < test_start)
    test = (panel.index >= test_start) & (panel.index < test_end)
    listed = panel.available[train].sum(axis=0) >= f.min_listed * train.sum()
    trades = panel.available[test].any(axis=0)
    symbols = tuple(s for s, keep in zip(panel.symbols, listed & trades, strict=True) if keep)
    if len(symbols) < cross_section.MIN_ASSETS:
      raise config_lib.ConfigError(
          f'the fold testing from {test_start:%Y-%m-%d} has {len(symbols)} coins listed '
          f'through its training window ({", ".join(symbols)}); a cross-section needs '
          f'{cross_section.MIN_ASSETS}: add coins or start the folds later')
    folds.append(UniverseFold(len(folds), train_start, test_start, test_end, symbols))
    test_start = test_end
  if not folds:
    raise config_lib.ConfigError(f'config.folds: no test window between {start} and {end}')
  return folds


def model_feature_set(config: ml_collections.ConfigDict, name: str) -> str:
  """The feature set model `name` reads: its own after '@', else `config.data.feature_set`."""
  return split_model(name)[1] or config.data.feature_set


def prep_config(config: ml_collections.ConfigDict,
                feature_set: str | None = None) -> ml_collections.ConfigDict:
  """The training config `input_pipeline.prepare_data` reads for a fold: per-bar rows
  (context 1, stride 1), the benchmark's labels, feature set (`feature_set`, default
  `config.data.feature_set`) and a calendar split."""
  prep = config_lib.default_config()
  prep.data.update(train='', feature_set=feature_set or config.data.feature_set, split='time',
                   val_fraction=config.data.val_fraction, embargo=config.data.embargo)
  prep.labels = config.labels.copy_and_resolve_references()
  prep.train.update(context_length=1, window_stride=1)
  return prep


@dataclasses.dataclass
class FoldInputs:
  """A fold's pooled training data and every coin's rows for scoring.

  prepared: `prepare_data` of the coins' frames up to an embargo before the test window.
  frames, raw_fit: those frames and their raw features, source path -> (rows, ...), for a
    model that prepares them its own way (FLAG-TRADER's windows).
  coins: per symbol {'features': float32 (rows, 60) normalised, 'close': (rows,),
    'test': bool (rows,) the test-window rows, 'grid': int (rows,) their panel rows}, rows the
    coin's bars in [train_start, test_end).
  test_rows: int (bars,) the panel rows of the test window.
  """

  prepared: input_pipeline.PreparedData
  coins: dict[str, dict[str, np.ndarray]]
  test_rows: np.ndarray
  frames: dict[str, pd.DataFrame]
  raw_fit: dict[str, np.ndarray]


def fold_inputs(config: ml_collections.ConfigDict, panel: universe_lib.Panel,
                raw: dict[str, np.ndarray], fold: UniverseFold,
                feature_set: str | None = None) -> FoldInputs:
  """The pooled training data of `fold` and its coins' normalised rows.

  Args:
    raw: symbol -> raw (rows, 60) features of `panel.frame(symbol)` in `feature_set`
      (default `config.data.feature_set`).
  """
  prep = prep_config(config, feature_set)
  embargo = pd.Timedelta(panel.freq) * input_pipeline.embargo_bars(prep)
  frames, feats, spans = {}, {}, {}
  for symbol in fold.symbols:
    frame = panel.frame(symbol)
    rows = (frame.index >= fold.train_start) & (frame.index < fold.test_end)
    fit = rows & (frame.index < fold.test_start - embargo)
    source = panel.sources[panel.column(symbol)]
    frames[source], feats[source] = frame[fit], raw[symbol][fit]
    spans[symbol] = (source, frame[rows], raw[symbol][rows])
  prepared = input_pipeline.prepare_data(prep, frames, feats)
  coins = {}
  for symbol, (source, frame, state) in spans.items():
    normalizer = prepared.normalizers[input_pipeline.asset_name(source)]
    coins[symbol] = {'features': normalizer.apply(state).astype(np.float32),
                     'close': frame['close'].to_numpy(np.float64),
                     'test': np.asarray(frame.index >= fold.test_start),
                     'grid': panel.index.get_indexer(frame.index)}
  test_rows = np.flatnonzero((panel.index >= fold.test_start) & (panel.index < fold.test_end))
  return FoldInputs(prepared=prepared, coins=coins, test_rows=test_rows, frames=frames,
                    raw_fit=feats)


def _rule_probs(close: np.ndarray, lookback: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
  """(probs (rows, 3) long when the score is positive, score (rows,)) of a return rule."""
  score = np.full(len(close), np.nan)
  score[lookback:] = sign * (close[lookback:] / close[:-lookback] - 1.0)
  direction = np.nan_to_num(np.sign(score))
  probs = policy_lib.probs_from_score(0.6 * direction).astype(np.float32)
  probs[np.isnan(score)] = np.nan
  return probs, score


def fold_flag_trader_config(config: ml_collections.ConfigDict, model: str, fold: UniverseFold,
                            seed: int) -> ml_collections.ConfigDict:
  """The training config of FLAG-TRADER `model` ('name' or 'name@feature_set') on a fold:
  the model's feature set, the benchmark's labels, calendar split and embargo; its data are
  the fold's frames, handed over prepared (`data.train` only names them)."""
  run = config.flag_traders[split_model(model)[0]].copy_and_resolve_references()
  run.seed = seed
  run.data.update(train=f'universe:{config.data.universe}@{",".join(fold.symbols)}',
                  feature_set=model_feature_set(config, model), split='time',
                  val_fraction=config.data.val_fraction, embargo=config.data.embargo,
                  max_bars=None)
  run.labels = config.labels.copy_and_resolve_references()
  return run


def _fit(config: ml_collections.ConfigDict, model: str, seed: int, fold: UniverseFold,
         data: FoldInputs, directory: str) -> baselines_lib.Baseline:
  """A model fitted on the fold's pooled training rows (FLAG-TRADER: a run into `directory`)."""
  prepared = data.prepared
  base = split_model(model)[0]
  if base in config.flag_traders:
    run = fold_flag_trader_config(config, model, fold, seed)
    own = input_pipeline.prepare_data(run, data.frames, data.raw_fit)
    train_lib.train_and_evaluate(run, os.path.join(directory, 'run'), prepared=own)
    fitted = baselines_lib.make_baseline('flag_trader', path=os.path.join(directory, 'run'))
  else:
    settings = dict(config.baselines.get(base, {}) or {})
    if 'seed' in baselines_lib.BASELINES[base].defaults:
      settings['seed'] = seed
    fitted = baselines_lib.make_baseline(base, **settings)
  train_mask = np.zeros(len(prepared.labels), bool)
  train_mask[prepared.train_ends] = True
  return fitted.fit(prepared.features, prepared.labels, train_mask)


def model_kind(config: ml_collections.ConfigDict, model: str) -> str:
  """The `baselines.BASELINES` name behind a model name ('flag_trader' for FLAG-TRADERs;
  a feature set after '@' dropped)."""
  base = split_model(model)[0]
  return 'flag_trader' if base in config.flag_traders else base


def _model_scores(config: ml_collections.ConfigDict, model: str, seed: int, fold: UniverseFold,
                  data: FoldInputs, directory: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
  """Per coin (probs (rows, 3), score (rows,)) of a model fitted on the pooled training rows,
  and its validation probabilities (V, 3) in `prepared.val_ends` order. Each coin is scored
  on its own rows, so a look-back never crosses coins."""
  prepared = data.prepared
  probs, scores = {}, {}
  if model in RULES:  # rules read no features, so never carry a feature set
    lookback, sign = int(config.baselines.lookback), (-1.0 if model == 'reversal' else 1.0)
    for symbol, coin in data.coins.items():
      probs[symbol], scores[symbol] = _rule_probs(coin['close'], lookback, sign)
  else:
    fitted = _fit(config, model, seed, fold, data, directory)
    for symbol, coin in data.coins.items():
      probs[symbol] = fitted.predict(coin['features'], close=coin['close'])
      scores[symbol] = probs[symbol][:, 2] - probs[symbol][:, 0]
  # A coin's training rows are the first rows of its scored rows (both from train_start).
  val = np.full((len(prepared.val_ends), 3), np.nan, np.float32)
  for symbol, f in zip(fold.symbols, prepared.summary['files'], strict=True):
    own = (prepared.val_ends >= f['offset']) & (prepared.val_ends < f['offset'] + f['bars'])
    val[own] = probs[symbol][prepared.val_ends[own] - f['offset']]
  return probs, scores, val


def universe_settings_hash(config: ml_collections.ConfigDict, model: str) -> str:
  """What a finished trial's result depends on besides its fold: data, labels, costs,
  portfolio and the model's own settings."""
  base = split_model(model)[0]
  b = config.backtest
  # Only the backtest settings a trial reads: a new policy or report field elsewhere in the
  # backtest config must not orphan finished trials.
  backtest = {k: b[k] for k in BACKTEST_FIELDS} | {'calibration': b.calibration.to_dict()}
  parts = {'data': config.data.to_dict(), 'labels': config.labels.to_dict(),
           'backtest': backtest, 'portfolio': config.portfolio.to_dict(),
           'model': (config.flag_traders[base].to_dict() if base in config.flag_traders
                     else config.baselines.get(base)),
           'feature_set': model_feature_set(config, model),
           'null': [config.tests.null_rotations, config.tests.null_min_offset],
           'lookback': config.baselines.lookback}
  text = ml_collections.ConfigDict(json_types.to_json_types(parts)).to_json_best_effort(
      sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_universe_trial(config: ml_collections.ConfigDict, panel: universe_lib.Panel,
                       fold: UniverseFold, data: FoldInputs, model: str, seed: int,
                       directory: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """One (model, fold, seed): fit, score every coin, decide, measure; `directory` holds
  what the trial writes (a FLAG-TRADER run).

  Returns:
    (the JSON-able record of `results.jsonl`, its per-bar series: 'rank_ic', 'ic' (bars,),
    'quantile_spread' (bars,) top minus bottom quintile's forward return, 'long_short_returns',
    'long_short_free_returns' (the same book without shorting cost), 'top_k_returns' (long
    only the k best), 'timing_returns' (bars,) net returns, 'coin_returns' (bars, coins) each
    coin's timing net returns, 'long_short_null' (R, bars) the long-short book of the scores
    rotated in time).
  """
  start = time.time()
  prepared = data.prepared
  probs, scores, val_probs = _model_scores(config, model, seed, fold, data, directory)
  symbols = list(fold.symbols)
  bars = len(data.test_rows)
  first = int(data.test_rows[0])
  test_probs = np.concatenate([probs[s][data.coins[s]['test']] for s in symbols])
  cal = config.backtest.calibration
  decided = baselines_lib.calibrate_and_decide(
      val_probs, prepared.labels[prepared.val_ends], np.ones(len(prepared.val_ends), bool),
      test_probs, mode='skip' if model in UNCALIBRATED else cal.mode, bias=cal.bias,
      temperature=cal.temperature, threshold=config.backtest.confidence_threshold, name=model)
  margin = decided.probs[0, :, 2] - decided.probs[0, :, 0]
  actions = np.full((bars, len(symbols)), constants.HOLD, np.int32)
  score = np.full((bars, len(symbols)), np.nan)
  offset = 0
  for a, symbol in enumerate(symbols):
    coin = data.coins[symbol]
    grid = coin['grid'][coin['test']] - first
    n = len(grid)
    actions[grid, a] = decided.actions[offset:offset + n]
    own = scores[symbol][coin['test']] if model in RULES else margin[offset:offset + n]
    score[grid, a] = np.where(decided.available[offset:offset + n], own, np.nan)
    offset += n
  prices = test_prices(panel, fold, data)
  b = config.backtest
  params = portfolio_params(config)
  targets = portfolio_lib.targets_from_actions(
      actions, sizing='fixed', max_position_pct=config.portfolio.timing_position)
  timing = portfolio_lib.timing_portfolio(prices, targets, params)
  horizon = int(config.labels.horizon)
  forward = cross_section.panel_forward_returns(prices.close, config.labels.horizon)
  series = {'timing_returns': _period_returns(timing.equity, b.initial_capital),
            'coin_returns': portfolio_lib.sleeve_returns(timing, params, prices.available)}
  record: dict[str, Any] = {
      'model': model, 'fold': fold.index, 'seed': seed, 'fold_bounds': fold.to_dict(),
      'settings': universe_settings_hash(config, model),
      'timing': portfolio_lib.summarize_portfolio(timing, params),
      'train_windows': int(len(prepared.train_ends)), 'val_bars': int(len(prepared.val_ends))}
  if model in CONSTANT_SCORES:  # one score for every coin: nothing to rank
    series.update(rank_ic=np.full(bars, np.nan), ic=np.full(bars, np.nan),
                  quantile_spread=np.full(bars, np.nan),
                  long_short_returns=np.full(bars, np.nan),
                  long_short_free_returns=np.full(bars, np.nan),
                  top_k_returns=np.full(bars, np.nan),
                  long_short_null=np.full((0, bars), np.nan, np.float32))
    record.update(ic=None, rank_ic=None, per_coin_ic=None, long_short=None,
                  long_short_free=None, top_k=None)
  else:
    per_bar = cross_section.cross_sectional_ic(score, forward, prices.available)
    books = {'k': config.portfolio.k, 'rebalance_every': config.portfolio.rebalance_every,
             'band': config.portfolio.band}
    long_short = portfolio_lib.long_short_portfolio(prices, score, params, **books)
    free = portfolio_params(config, short_rate=0.0)  # the same book without shorting cost
    long_short_free = portfolio_lib.long_short_portfolio(prices, score, free, **books)
    top_k = portfolio_lib.top_k_portfolio(prices, score, params, **books)
    per_coin = cross_section.time_series_ic(score, forward, prices.available)
    offsets = null_offsets(config, fold, bars)
    null = (portfolio_lib.rank_portfolio_returns(
        prices, portfolio_lib.rotated_scores(score, offsets), params, k=config.portfolio.k,
        rebalance_every=config.portfolio.rebalance_every, band=config.portfolio.band)
            if len(offsets) else np.full((0, bars), np.nan))
    quantiles = cross_section.quantile_returns(
        score, forward, prices.available, horizon=horizon,
        num_quantiles=min(5, len(symbols)))
    series.update(rank_ic=per_bar['rank_ic'], ic=per_bar['ic'],
                  quantile_spread=quantiles['spread'],
                  long_short_returns=_period_returns(long_short.equity, b.initial_capital),
                  long_short_free_returns=_period_returns(long_short_free.equity,
                                                          b.initial_capital),
                  top_k_returns=_period_returns(top_k.equity, b.initial_capital),
                  long_short_null=null.astype(np.float32))
    record.update(
        ic=cross_section.newey_west_mean(per_bar['ic'], horizon=horizon),
        rank_ic=cross_section.newey_west_mean(per_bar['rank_ic'], horizon=horizon),
        per_coin_ic=dict(zip(symbols, per_coin['ic'].tolist(), strict=True)),
        quantile_means=quantiles['mean'].tolist(),
        long_short=portfolio_lib.summarize_portfolio(long_short, params),
        long_short_free=portfolio_lib.summarize_portfolio(long_short_free, free),
        top_k=portfolio_lib.summarize_portfolio(top_k, params))
  record['wall_seconds'] = time.time() - start
  return json_types.to_json_types(record), series


def null_offsets(config: ml_collections.ConfigDict, fold: UniverseFold,
                 bars: int) -> np.ndarray:
  """The `config.tests.null_rotations` time shifts of the long-short placebo on a fold's
  test window: the same for every model of the fold (seeded by the fold), each at least
  `tests.null_min_offset` bars from the real alignment either way; none when the window is
  too short for that."""
  low = int(config.tests.null_min_offset)
  if bars <= 2 * low:
    return np.zeros(0, np.int64)
  rng = np.random.default_rng([int(fold.index), 12])
  return rng.integers(low, bars - low + 1, size=int(config.tests.null_rotations))


def test_prices(panel: universe_lib.Panel, fold: UniverseFold,
                data: FoldInputs) -> portfolio_lib.PanelPrices:
  """(test bars, fold coins) open, close and availability of the fold's test window."""
  rows = np.ix_(data.test_rows, [panel.column(s) for s in fold.symbols])
  return portfolio_lib.PanelPrices(panel.open[rows], panel.close[rows], panel.available[rows])


def portfolio_params(config: ml_collections.ConfigDict, *, short_rate: float | None = None
                     ) -> portfolio_lib.PortfolioParams:
  """The costs of `config.backtest` and the shorting rate of `config.portfolio` (or
  `short_rate`)."""
  b = config.backtest
  return portfolio_lib.make_portfolio_params(
      initial_capital=b.initial_capital, commission=b.commission, slippage=b.slippage,
      commission_sell=b.commission_sell, slippage_sell=b.slippage_sell, fill=b.fill,
      short_rate=config.portfolio.short_rate if short_rate is None else short_rate,
      periods_per_year=b.periods_per_year)


def benchmark_returns(config: ml_collections.ConfigDict, panel: universe_lib.Panel,
                      fold: UniverseFold, data: FoldInputs) -> dict[str, np.ndarray]:
  """Per-bar net returns (test bars,) of the SPEC 12 benchmarks on the fold's test window:
  'equal_weight' (the fold's coins bought at its start and held) and 'btc_hold' (all in
  `config.data.btc`, NaN when the fold lacks it)."""
  prices = test_prices(panel, fold, data)
  params = portfolio_params(config)
  capital = config.backtest.initial_capital
  equal = portfolio_lib.run_portfolio(
      prices, portfolio_lib.benchmark_targets(prices.available), params)
  out = {'equal_weight': _period_returns(equal.equity, capital),
         'btc_hold': np.full(len(data.test_rows), np.nan)}
  if config.data.btc in fold.symbols:
    btc = portfolio_lib.run_portfolio(prices, portfolio_lib.benchmark_targets(
        prices.available, column=fold.symbols.index(config.data.btc)), params)
    out['btc_hold'] = _period_returns(btc.equity, capital)
  return out



def _period_returns(equity: Any, capital: float) -> np.ndarray:
  """(N,) float64 returns of an equity curve that started at `capital`."""
  return np.asarray(metrics_lib.period_returns(np.asarray(equity, np.float64), capital))


def model_names(config: ml_collections.ConfigDict,
                log: Callable[[str], None] = print) -> list[str]:
  """`config.models` that run here; the others are logged with the reason they are skipped.

  A learned model may name its feature set after '@' (e.g. 'logistic@himari', the same model
  without the market context of 'himari_market'); without one it reads
  `config.data.feature_set`.

  Raises:
    ConfigError: an unknown model or feature set, or a rule given a feature set.
  """
  names = config_lib.split_list(config.models)
  known = set(RULES) | set(baselines_lib.BASELINES) - {'flag_trader'} | set(config.flag_traders)
  unknown = [n for n in names if split_model(n)[0] not in known]
  if unknown:
    raise config_lib.ConfigError(f'config.models: unknown {", ".join(unknown)}; valid: '
                                 f'{", ".join(sorted(known))}, each learned one optionally '
                                 'with @feature_set')
  for name in names:
    base, feature_set = split_model(name)
    if feature_set is None:
      continue
    if base in RULES or base in CONSTANT_SCORES:
      raise config_lib.ConfigError(f'config.models: {name}: {base} reads no features; '
                                   'drop the @feature_set')
    if feature_set not in features_lib.FEATURE_SETS:
      raise config_lib.ConfigError(f'config.models: {name}: unknown feature set; valid: '
                                   f'{", ".join(features_lib.FEATURE_SETS)}')
  if len(set(names)) != len(names):
    raise config_lib.ConfigError(f'config.models names a model twice: {config.models}')
  out = []
  for name in names:
    why = (None if name in RULES
           else baselines_lib.unavailable_reason(model_kind(config, name)))
    if why:
      log(f'{name} skipped: {why}')
    else:
      out.append(name)
  return out


def load_panel(config: ml_collections.ConfigDict) -> universe_lib.Panel:
  """The universe of `config.data` (its `symbols`, or every file's coin)."""
  symbols = [s.upper() for s in config_lib.split_list(config.data.symbols)] or None
  return universe_lib.load_universe(config.data.universe, symbols=symbols)


@dataclasses.dataclass
class FoldTask:
  """The unfinished trials of one fold: what `run_fold` runs here or as one Ray task."""

  fold: UniverseFold
  trials: list[tuple[str, int, int]]  # (model, fold, seed)


class FoldRunner:
  """Runs a fold's trials: loads the panel and each feature set's raw features once per
  process (a Ray worker loads its own), writes the fold's benchmark returns and each trial's
  series, and returns the trials' records (the driver appends them to `results.jsonl`)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self._panel: universe_lib.Panel | None = None
    self._raw: dict[str, dict[str, np.ndarray]] = {}

  def __getstate__(self) -> dict[str, Any]:  # shipped to Ray without its caches
    return {'config': self.config, 'workdir': self.workdir, '_panel': None, '_raw': {}}

  @property
  def panel(self) -> universe_lib.Panel:
    if self._panel is None:
      self._panel = load_panel(self.config)
    return self._panel

  def raw(self, feature_set: str) -> dict[str, np.ndarray]:
    if feature_set not in self._raw:
      self._raw[feature_set] = _raw_features(self.config, self.panel, feature_set)
    return self._raw[feature_set]

  def __call__(self, task: FoldTask, on_record: Callable[[dict[str, Any]], None] | None = None
               ) -> list[dict[str, Any]]:
    config, fold = self.config, task.fold
    inputs: dict[str, FoldInputs] = {}

    def data(feature_set: str) -> FoldInputs:
      if feature_set not in inputs:
        inputs[feature_set] = fold_inputs(config, self.panel, self.raw(feature_set), fold,
                                          feature_set)
      return inputs[feature_set]

    first = data(config.data.feature_set)
    path = os.path.join(self.workdir, BENCHMARKS, f'fold_{fold.index:03d}.npz')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **benchmark_returns(config, self.panel, fold, first))
    records = []
    for model, _, seed in task.trials:
      directory = trial_dir(self.workdir, model, fold.index, seed)
      os.makedirs(directory, exist_ok=True)
      record, series = run_universe_trial(config, self.panel, fold,
                                          data(model_feature_set(config, model)), model, seed,
                                          directory)
      np.savez(os.path.join(directory, SERIES), **series)
      records.append(record)
      if on_record is not None:
        on_record(record)
    return records


def run_universe_benchmark(config: ml_collections.ConfigDict, workdir: str, *,
                           ray_address: str | None = None,
                           log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every unfinished (model, fold, seed) trial, then writes the report and its tests
  (`universe_report`).

  In-process the trials run fold by fold; with `ray_address` each fold's unfinished trials
  are one Ray task (`dispatch.run_trials`; the workdir must be on storage every node sees).
  Either way each finished trial is appended to `results.jsonl` at once, so an interrupted
  run resumes where it stopped.

  Returns:
    {'rows': the report's rows per model, 'tests': the answers, 'report': its path,
    'run_seconds': float}.

  Raises:
    ConfigError: unusable settings, or a workdir whose finished trials used other folds or
      settings; DataError: universe files that cannot be loaded.
  """
  start = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  models = model_names(config, log)
  runner = FoldRunner(config, workdir)
  panel = runner.panel
  folds = plan_folds(panel, config)
  log(f'{panel.num_assets} coins, {len(folds)} folds testing {folds[0].test_start:%Y-%m-%d} .. '
      f'{folds[-1].test_end:%Y-%m-%d}; models {", ".join(models)}')
  trials = [(m, f.index, s) for f in folds for m in models for s in range(num_seeds(config, m))]
  hashes = {m: universe_settings_hash(config, m) for m in models}
  path = os.path.join(workdir, RESULTS)
  done = {}
  for record in json_types.read_jsonl(path) if os.path.exists(path) else []:
    key = (record['model'], record['fold'], record['seed'])
    if record['fold'] < len(folds) and record['model'] in hashes:
      if (record['fold_bounds'] != json_types.to_json_types(folds[record['fold']].to_dict())
          or record['settings'] != hashes[record['model']]):
        raise config_lib.ConfigError(f'{path}: trial {key} was run with other folds or '
                                     'settings than config; use another --workdir')
      done[key] = record
  todo = [t for t in trials if t not in done]
  log(f'{len(trials)} trials; {len(trials) - len(todo)} done, {len(todo)} to run')
  tasks = [FoldTask(f, [t for t in todo if t[1] == f.index]) for f in folds]
  tasks = [t for t in tasks if t.trials or not os.path.exists(
      os.path.join(workdir, BENCHMARKS, f'fold_{t.fold.index:03d}.npz'))]
  started = time.time()
  ran = [0]

  def store(record: dict[str, Any]) -> None:
    json_types.append_jsonl(path, record)
    done[(record['model'], record['fold'], record['seed'])] = record
    ran[0] += 1
    left = len(trials) - len(done)
    rank_ic = record['rank_ic']['mean'] if record['rank_ic'] else float('nan')
    eta = (time.time() - started) / ran[0] * left
    log(f'[{len(done)}/{len(trials)}] {record["model"]} fold {record["fold"]} seed '
        f'{record["seed"]}: rank IC {rank_ic:+.4f}, timing net Sharpe '
        f'{record["timing"]["net_sharpe"]:+.2f} | {record["wall_seconds"]:.1f} s | elapsed '
        f'{format_seconds(time.time() - start)}, ETA {format_seconds(eta)}')

  if ray_address is None:
    for task in tasks:
      runner(task, on_record=store)
  else:
    log(f'{len(tasks)} folds as Ray tasks on {ray_address}')
    dispatch.run_trials(runner, tasks, ray_address,
                        on_result=lambda i, records: [store(r) for r in records])
  times = panel.index[np.concatenate([
      np.flatnonzero((panel.index >= f.test_start) & (panel.index < f.test_end))
      for f in folds])]
  result = universe_report.write_universe_report(config, workdir, models, folds,
                                                 panel.symbols, times, log=log)
  log(f'wrote {result["report"]} ({format_seconds(time.time() - start)} this run)')
  return {**result, 'run_seconds': time.time() - start}


def _raw_features(config: ml_collections.ConfigDict, panel: universe_lib.Panel,
                  feature_set: str | None = None) -> dict[str, np.ndarray]:
  """symbol -> raw (rows, 60) features of `panel.frame(symbol)` for `feature_set` (default
  `config.data.feature_set`)."""
  feature_set = feature_set or config.data.feature_set
  if features_lib.get_feature_set(feature_set).name == 'himari_market':
    return market_features.panel_features(panel, btc=config.data.btc)
  return {s: features_lib.compute_features(panel.frame(s), feature_set)
          for s in panel.symbols}
