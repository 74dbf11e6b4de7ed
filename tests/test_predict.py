"""Inference: trailing windows, no look-ahead through batching or padding, availability."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import load_config_file

from himari_jax.data import features
from himari_jax.data import ohlcv as data
from himari_jax.inference import predict
from himari_jax.model import checkpoint
from himari_jax.model import flag_trader as model

CONTEXT = 8


@pytest.fixture(scope='module')
def loaded():
  config = load_config_file('flag_trader', 'tiny')
  model_config = model.ModelConfig.from_config(config.model)
  params = model.init_params(model_config, jax.random.key(0), CONTEXT)
  # Non-zero adapters, so the merged-LoRA fast path is really exercised.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.05 if 'lora_B' in jax.tree_util.keystr(path) else p, params)
  df = data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:600]
  normalizer = features.Normalizer.fit(features.compute_features(df))
  config.train.context_length = CONTEXT
  return checkpoint.LoadedModel(config=config, model_config=model_config, params=params,
                                normalizer=normalizer, meta={}, step=0, path='')


@pytest.fixture(scope='module')
def bars():
  return data.builtin_dataset('btc_usdt_1h_2025_2026').iloc[:600]


def test_shapes_and_availability(loaded, bars):
  preds = predict.predict_logits(loaded, bars)
  first = predict.first_available_bar(CONTEXT)
  assert first == features.WARMUP_BARS + CONTEXT - 1
  assert preds.logits.shape == (len(bars), 3)
  assert not preds.available[:first].any() and preds.available[first:].all()
  assert np.isnan(preds.logits[:first]).all()
  np.testing.assert_allclose(preds.probs[first:].sum(axis=1), 1.0, rtol=1e-5)
  assert (preds.index == bars.index).all()


def test_batch_size_does_not_change_predictions(loaded, bars):
  big = predict.predict_logits(loaded, bars, batch_size=4096).logits
  one = predict.predict_logits(loaded, bars.iloc[:260], batch_size=1).logits
  np.testing.assert_allclose(one, big[:260], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_later_bars_do_not_change_earlier_predictions(loaded, bars):
  full = predict.predict_logits(loaded, bars).logits
  changed = bars.copy()
  changed.iloc[400:, :4] *= 1.5  # a different future, still valid OHLC
  other = predict.predict_logits(loaded, changed).logits
  np.testing.assert_allclose(other[:400], full[:400], rtol=1e-5, atol=1e-6, equal_nan=True)
  assert not np.allclose(other[400:], full[400:])


def test_merged_lora_equals_adapters(loaded, bars):
  feats = loaded.normalizer.apply(features.compute_features(bars))
  merged = predict.predict_logits_from_features(loaded.params, loaded.model_config, feats,
                                                CONTEXT, merge=True)
  plain = predict.predict_logits_from_features(loaded.params, loaded.model_config, feats,
                                               CONTEXT, merge=False)
  np.testing.assert_allclose(merged, plain, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_last_position_equals_full_window_model_output(loaded, bars):
  feats = np.asarray(loaded.normalizer.apply(features.compute_features(bars)))
  logits = predict.predict_logits_from_features(loaded.params, loaded.model_config, feats,
                                                CONTEXT)
  t = 350
  window = feats[None, t - CONTEXT + 1:t + 1]
  direct = model.FlagTrader(loaded.model_config).apply({'params': loaded.params}, window)
  np.testing.assert_allclose(logits[t], np.asarray(direct)[0, -1], rtol=1e-4, atol=1e-5)


def test_a_model_is_scored_with_its_own_feature_set_only(loaded, bars):
  seed = dataclasses.replace(loaded, normalizer=features.Normalizer.identity(),
                             meta={'feature_set': 'seed_causal'})
  assert seed.feature_set == 'seed_causal'
  preds = predict.predict_logits(seed, bars, feature_set='seed_causal')
  want = predict.predict_logits_from_features(
      seed.params, seed.model_config, features.compute_features(bars, 'seed_causal'), CONTEXT)
  np.testing.assert_array_equal(preds.logits, want)
  with pytest.raises(features.FeatureSetError, match="trained on feature set 'seed_causal'"):
    predict.predict_logits(seed, bars, feature_set='himari')
  # Without a meta record, the run's config says which set it trained on.
  config = loaded.config.copy_and_resolve_references()
  config.data.feature_set = 'seed_exact'
  with pytest.raises(features.FeatureSetError, match="scored with 'himari'"):
    predict.predict_logits(dataclasses.replace(loaded, config=config), bars, feature_set='himari')


@pytest.mark.extra
def test_a_pt_member_defaults_to_seed_causal(loaded, tmp_path):
  pytest.importorskip('torch')
  from himari_jax.inference import members
  from himari_jax.model import convert

  convert.save_torch_checkpoint(tmp_path / 'seed.pt', loaded.params, loaded.model_config)
  member = members.load_member(str(tmp_path / 'seed.pt'))
  assert member.feature_set == member.config.data.feature_set == 'seed_causal'
  assert member.normalizer.is_identity and member.config.train.context_length == 1
  jax.tree.map(np.testing.assert_array_equal, member.params, jax.device_get(loaded.params))


def test_positions_of_a_position_model(loaded, bars):
  preds = predict.predict_logits(loaded, bars)
  with pytest.raises(ValueError, match='objective=classification scores actions'):
    predict.predicted_positions(loaded, preds)
  config = loaded.config.copy_and_resolve_references()
  config.train.objective = 'sharpe'
  sharpe = dataclasses.replace(loaded, config=config)
  held = predict.predicted_positions(sharpe, preds)
  first = predict.first_available_bar(CONTEXT)
  assert np.isnan(held[:first]).all()
  np.testing.assert_allclose(held[first:], np.tanh(preds.logits[first:, 2] -
                                                   preds.logits[first:, 0]), rtol=1e-6)
  config.train.long_only = True
  long_only = predict.predicted_positions(dataclasses.replace(loaded, config=config), preds)
  assert ((long_only[first:] > 0) & (long_only[first:] < 1)).all()
