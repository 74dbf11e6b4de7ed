"""Baselines: one interface, no look-ahead, save/load round trips, FLAG-TRADER-like decisions."""

import sys

import numpy as np
import pytest

from himari_jax.constants import HOLD
from himari_jax.data import features, labels
from himari_jax.data import ohlcv as data
from himari_jax.inference import decisions
from himari_jax.research import baselines

NUM_BARS = 2000
FIT_END = 1200  # bars [WARMUP, FIT_END) train every model
CUT = 1600  # the leak test changes bars from here on
RUN = 'checkpoints/small_a'  # a small trained FLAG-TRADER run kept in the repository

_NO_LIGHTGBM = baselines.unavailable_reason('lightgbm')
_LIGHTGBM = pytest.param('lightgbm', marks=[pytest.mark.extra, pytest.mark.skipif(
    _NO_LIGHTGBM is not None, reason=f'optional LightGBM baseline: {_NO_LIGHTGBM}')])
# Tiny settings: a few optimisation steps / trees keep every fit well under a second.
SMALL = {'logistic': {'steps': 40}, 'mlp': {'hidden': (16,), 'context_length': 4, 'steps': 40,
                                             'batch_size': 128},
         'mlp_sharpe': {'hidden': (16,), 'context_length': 4, 'steps': 40, 'batch_size': 8,
                        'window': 32},
         'lightgbm': {'num_boost_round': 10, 'min_data_in_leaf': 20}}
MODELS = ['label_prior', 'buy_and_hold', 'momentum', 'logistic', 'mlp', 'mlp_sharpe', _LIGHTGBM]


def _prepare(df, normalizer=None):
  feats = features.compute_features(df)
  y, valid = labels.make_labels(df, 'threshold', horizon=6, threshold=0.01)
  valid &= np.arange(len(df)) >= features.WARMUP_BARS
  train = valid & (np.arange(len(df)) < FIT_END)
  normalizer = normalizer or features.Normalizer.fit(feats, train)
  return normalizer.apply(feats).astype(np.float32), y, train, df['close'].to_numpy(), normalizer


@pytest.fixture(scope='module')
def bars():
  return data.builtin_dataset('btc_usdt_1h_2020_2024').iloc[-NUM_BARS:]


@pytest.fixture(scope='module')
def changed(bars):
  other = bars.copy()
  rng = np.random.default_rng(0)
  # A different future from CUT on: prices scaled bar by bar (still valid OHLC), volume doubled.
  other.iloc[CUT:, :4] *= rng.uniform(0.8, 1.25, size=(NUM_BARS - CUT, 1))
  other.iloc[CUT:, 4] *= 2.0
  return other


@pytest.fixture(scope='module')
def prepared(bars):
  return _prepare(bars)


def _fit(name, prepared, **config):
  feats, y, train, close, _ = prepared
  model = baselines.make_baseline(name, **{**SMALL.get(name, {}), **config})
  return model.fit(feats, y, train, close=close)


@pytest.mark.parametrize('name', MODELS)
def test_predictions_do_not_see_later_bars(name, prepared, changed):
  model = _fit(name, prepared)
  feats, _, _, close, normalizer = prepared
  other_feats, _, _, other_close, _ = _prepare(changed, normalizer)
  original = model.predict(feats, close=close)
  perturbed = model.predict(other_feats, close=other_close)
  assert original.shape == (NUM_BARS, 3) and original.dtype == np.float32
  np.testing.assert_allclose(perturbed[:CUT], original[:CUT], rtol=0, atol=1e-6, equal_nan=True)
  if name not in ('label_prior', 'buy_and_hold'):  # the perturbation is seen after CUT
    assert not np.allclose(perturbed[CUT:], original[CUT:])


@pytest.mark.parametrize('name', MODELS)
def test_save_load_round_trip_and_determinism(name, prepared, tmp_path):
  feats, _, _, close, _ = prepared
  model = _fit(name, prepared)
  probs = model.predict(feats, close=close)
  available = ~np.isnan(probs).any(axis=1)
  np.testing.assert_allclose(probs[available].sum(axis=1), 1.0, atol=1e-5)
  model.save(tmp_path / name)
  assert not list(tmp_path.rglob('*.pkl'))
  loaded = baselines.load_baseline(tmp_path / name)
  assert type(loaded) is type(model) and loaded.config == model.config
  np.testing.assert_array_equal(loaded.predict(feats, close=close), probs)
  np.testing.assert_array_equal(_fit(name, prepared).predict(feats, close=close), probs)


def test_rule_baselines(prepared):
  feats, y, train, close, _ = prepared
  prior = _fit('label_prior', prepared).predict(feats)
  np.testing.assert_allclose(prior[0], np.bincount(y[train], minlength=3) / train.sum(),
                             rtol=1e-6)
  assert (_fit('buy_and_hold', prepared, eps=0.01).predict(feats)[:, 2] == np.float32(0.99)).all()
  momentum = _fit('momentum', prepared, confidence=0.7).predict(feats, close=close)
  t = np.arange(24, NUM_BARS)
  rise = close[t] > close[t - 24]
  np.testing.assert_allclose(momentum[t[rise], 2], 0.7, rtol=1e-6)
  np.testing.assert_allclose(momentum[t[~rise], 0], 0.7, rtol=1e-6)
  np.testing.assert_allclose(momentum[:24], 1 / 3, rtol=1e-6)  # no 24-bar history yet
  with pytest.raises(baselines.BaselineError, match='needs close prices'):
    _fit('momentum', prepared).predict(feats)


@pytest.mark.parametrize('name', ['logistic', 'mlp', _LIGHTGBM])
def test_learned_models_fit_a_learnable_rule(name):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1500, 60)).astype(np.float32)
  y = np.select([x[:, 0] > 0.5, x[:, 0] < -0.5], [2, 0], 1).astype(np.int32)
  config = {'steps': 300, 'class_weights': 'none'} if name != 'lightgbm' else {
      'class_weights': 'none', 'num_boost_round': 50}
  if name == 'mlp':
    config['context_length'] = 1
  model = baselines.make_baseline(name, **config).fit(x[:1000], y[:1000], np.ones(1000, bool))
  accuracy = np.mean(model.predict(x[1000:]).argmax(axis=1) == y[1000:])
  assert accuracy > 0.7  # always HOLD scores about 0.38


def test_mlp_window_needs_history(prepared):
  feats = prepared[0]
  probs = _fit('mlp', prepared).predict(feats)
  assert np.isnan(probs[:3]).all() and not np.isnan(probs[3:]).any()


def test_flag_trader_adapter(bars, changed, tmp_path):
  model = baselines.make_baseline('flag_trader', path=RUN)
  feats, y, train, _, _ = _prepare(bars, model.normalizer)
  model.fit(feats, y, train)
  probs = model.predict(feats)
  first = features.WARMUP_BARS + model.context_length - 1
  assert np.isnan(probs[:first]).all()
  np.testing.assert_allclose(probs[first:].sum(axis=1), 1.0, atol=1e-5)
  other = model.predict(_prepare(changed, model.normalizer)[0])
  np.testing.assert_allclose(other[:CUT], probs[:CUT], rtol=0, atol=1e-6, equal_nan=True)
  assert not np.allclose(other[CUT:], probs[CUT:])
  model.save(tmp_path / 'ft')
  np.testing.assert_array_equal(baselines.load_baseline(tmp_path / 'ft').predict(feats), probs)


def test_registry_and_missing_lightgbm(monkeypatch):
  assert set(baselines.available_baselines()) == {
      'label_prior', 'buy_and_hold', 'momentum', 'logistic', 'lightgbm', 'mlp', 'mlp_sharpe',
      'flag_trader'}
  monkeypatch.setitem(sys.modules, 'lightgbm', None)  # what an absent package looks like
  reasons = baselines.available_baselines()
  assert 'baselines' in reasons['lightgbm'] and reasons['logistic'] is None
  with pytest.raises(ImportError, match='lightgbm is not installed'):
    baselines.make_baseline('lightgbm')
  with pytest.raises(baselines.BaselineError, match='unknown baseline'):
    baselines.make_baseline('xgboost')
  with pytest.raises(baselines.BaselineError, match=r"unknown config field\(s\) \['step'\]"):
    baselines.make_baseline('logistic', step=3)


def test_calibrate_and_decide():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3000, 3)) + np.array([0.0, 1.0, 0.0])
  probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
  val_labels = rng.choice(3, size=3000, p=[0.3, 0.4, 0.3]).astype(np.int32)
  val_mask = np.ones(3000, bool)
  test = probs[:500].copy()
  test[:5] = np.nan  # unavailable bars
  # No calibration, no threshold: the argmax, probabilities unchanged.
  raw = baselines.calibrate_and_decide(probs, val_labels, val_mask, test, mode='none',
                                       temperature=False)
  np.testing.assert_allclose(raw.probs[0, 5:], test[5:], rtol=1e-5)
  np.testing.assert_array_equal(raw.probs[0, :5], np.tile(decisions.HOLD_PROBS, (5, 1)))
  np.testing.assert_array_equal(raw.actions[5:], test[5:].argmax(axis=1))
  assert (raw.actions[:5] == HOLD).all() and (raw.confidence[:5] == 0).all()
  assert not raw.available[:5].any() and raw.available[5:].all()
  # fit_rates: decisions on validation occur at the validation label rates.
  fitted = baselines.calibrate_and_decide(probs, val_labels, val_mask, probs, mode='fit_rates')
  rates = np.bincount(fitted.actions, minlength=3) / 3000
  (summary,) = fitted.calibrations
  assert summary['mode'] == 'fit_rates' and summary['val_bars'] == 3000
  assert summary['temperature'] > 0 and summary['threshold'] == 0.0
  assert 0 <= summary['ece_after'] <= 1 and 'ece_before' in summary
  np.testing.assert_allclose(rates, np.bincount(val_labels, minlength=3) / 3000, atol=0.01)
  # A threshold above every confidence leaves only HOLD.
  strict = baselines.calibrate_and_decide(probs, val_labels, val_mask, test, mode='none',
                                          temperature=False, threshold=1.0)
  assert (strict.actions == HOLD).all()


def _planted_market(n=3000, seed=0):
  """Features whose column 0 at bar t is the sign of the return from t to t + 1 (noisy)."""
  rng = np.random.default_rng(seed)
  returns = rng.normal(0.0, 0.01, size=n)
  close = 100.0 * np.cumprod(np.concatenate([[1.0], 1.0 + returns[:-1]]))
  x = rng.normal(size=(n, 60)).astype(np.float32)
  x[:-1, 0] = np.sign(returns[:-1]) + rng.normal(0.0, 0.5, size=n - 1)
  return x, close


def test_mlp_sharpe_learns_a_planted_edge_and_pays_for_turnover():
  x, close = _planted_market()
  fit, test = slice(0, 2000), slice(2000, 3000)
  labels_ = np.ones(len(x), np.int32)  # the trading objective does not read labels
  config = {'hidden': (8,), 'context_length': 1, 'steps': 300, 'batch_size': 16, 'window': 64}

  def fitted(**extra):
    return baselines.make_baseline('mlp_sharpe', **config, **extra).fit(
        x[fit], labels_[fit], np.ones(2000, bool), close=close[fit])

  model = fitted()
  position = model.positions(x[test])
  forward = close[2001:] / close[2000:-1] - 1.0
  assert np.corrcoef(position[:-1], forward)[0, 1] > 0.5
  net = position[:-1] * forward - 0.0015 * np.abs(np.diff(position, prepend=position[0]))[:-1]
  assert net.mean() > 0
  probs = model.predict(x[test])
  np.testing.assert_allclose(probs[:, 2] - probs[:, 0], position, atol=1e-6)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
  assert model.outputs_position and (probs >= 0).all()
  # Long-only: positions in [0, 1], long where the planted sign says up.
  long_only = fitted(long_only=True).positions(x[test])
  assert (long_only >= 0).all() and (long_only <= 1).all()
  assert long_only[:-1][forward > 0].mean() > long_only[:-1][forward < 0].mean() + 0.3
  # Costs reach the gradient: 20 times the costs, less turnover.
  costly = fitted(cost_multiplier=20.0).positions(x[test])
  assert np.abs(np.diff(costly)).mean() < 0.5 * np.abs(np.diff(position)).mean()


def test_mlp_sharpe_settings_are_checked(prepared):
  feats, y, train, close, _ = prepared
  with pytest.raises(baselines.BaselineError, match='needs close prices'):
    baselines.make_baseline('mlp_sharpe').fit(feats, y, train)
  with pytest.raises(baselines.BaselineError, match='window must be >= 2'):
    baselines.make_baseline('mlp_sharpe', window=1).fit(feats, y, train, close=close)
  with pytest.raises(baselines.BaselineError, match="objective='logloss'"):
    baselines.make_baseline('mlp_sharpe', objective='logloss').fit(feats, y, train,
                                                                   close=close)
  with pytest.raises(baselines.BaselineError, match='fewer than one window'):
    baselines.make_baseline('mlp_sharpe', window=5000).fit(feats, y, train, close=close)


def test_calibrate_and_decide_skip_keeps_position_probabilities():
  position = np.linspace(-0.975, 0.975, 40)  # no bar exactly at the argmax tie of +-0.5
  probs = baselines._probs_from_positions(position.astype(np.float32))
  probs[:3] = np.nan
  decided = baselines.calibrate_and_decide(probs, np.ones(40, np.int32), np.ones(40, bool),
                                           probs, mode='skip')
  np.testing.assert_array_equal(decided.probs[0, 3:], probs[3:])
  assert decided.calibrations[0]['mode'] == 'skip' and not decided.available[:3].any()
  # The seed policy's argmax: BUY above +0.5, SELL below -0.5, HOLD between.
  expected = np.select([position > 0.5, position < -0.5], [2, 0], 1)
  np.testing.assert_array_equal(decided.actions[3:], expected[3:])
