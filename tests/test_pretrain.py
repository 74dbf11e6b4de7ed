"""Pre-training then LoRA: one budget for every arm; pretrain -> finetune keeps the base."""

import importlib.util
import json

import jax
import numpy as np
import pytest
from conftest import REPO, load_config_file
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himari_jax.data import ohlcv as data
from himari_jax.model import adapters, checkpoint
from himari_jax.model import flag_trader as model
from himari_jax.training import initialization, mesh, train

FINETUNE_ARMS = ('finetune', 'full_finetune', 'scratch_lora')
# The only fields in which the fine-tuning arms may differ: which weights start where and train.
ARM_FIELDS = {'model.lora_targets', 'model.freeze_base', 'arm'}


def _load_launcher():
  spec = importlib.util.spec_from_file_location('pretrain_compare',
                                                REPO / 'launch' / 'pretrain_compare.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


compare = _load_launcher()


def _flat_config(config):
  return traverse_util.flatten_dict(config.to_dict(), sep='.')


@pytest.mark.parametrize('tiny', [False, True])
def test_fine_tuning_arms_share_one_budget(tiny):
  suffix = ',tiny' if tiny else ''
  configs = {arm: load_config_file('pretrain', arm + suffix) for arm in FINETUNE_ARMS}
  flat = {arm: _flat_config(c) for arm, c in configs.items()}
  for arm in FINETUNE_ARMS[1:]:
    differ = {k for k in flat[arm] if flat[arm][k] != flat['finetune'][k]}
    assert differ <= ARM_FIELDS, (arm, differ)
  for config in configs.values():
    train.validate_config(config)
  assert configs['finetune'].model.freeze_base and configs['scratch_lora'].model.freeze_base
  assert not configs['full_finetune'].model.freeze_base
  assert configs['full_finetune'].model.lora_targets == ''


def test_pretrain_config_trains_everything_on_other_assets_and_eras():
  config = load_config_file('pretrain', 'pretrain')
  train.validate_config(config)
  finetune = load_config_file('pretrain', 'finetune')
  assert not config.model.freeze_base and config.model.lora_targets == ''
  files = config.data.train.split(',')
  assert len(files) == 3 and set(files) <= set(data.builtin_dataset_names())
  assert finetune.data.train not in files and config.data.test not in files
  # Same network as the fine-tuning arms, so its weights load into them.
  for name in ('d_model', 'num_layers', 'num_heads', 'dim_feedforward', 'max_length'):
    assert config.model[name] == finetune.model[name]


def test_unknown_config_argument():
  with pytest.raises(ValueError, match='unknown config argument .*finetune,tiny'):
    load_config_file('pretrain', 'lora')
  with pytest.raises(ValueError, match='unknown config argument'):
    load_config_file('pretrain', 'finetune,huge')


def test_score_logits_by_hand():
  # Predictions SELL, HOLD, BUY, HOLD for truths SELL, HOLD, HOLD, BUY; the fifth bar has
  # no prediction and the sixth no label: neither is scored.
  logits = np.array([[2., 0, 0], [0, 1, 0], [0, 0, 3], [0, 2, 1], [np.nan] * 3, [1, 0, 0]])
  labels = np.array([0, 1, 1, 2, 1, 0])
  valid = np.array([True, True, True, True, True, False])
  weights = np.array([2.0, 1.0, 3.0])
  metrics = compare.score_logits(logits, labels, valid, weights)
  log_probs = logits[:4] - np.log(np.exp(logits[:4]).sum(axis=1, keepdims=True))
  nll = -log_probs[np.arange(4), labels[:4]]
  w = weights[labels[:4]]
  assert metrics['test_accuracy'] == pytest.approx(0.5)
  assert metrics['test_balanced_accuracy'] == pytest.approx((1 + 0.5 + 0) / 3)
  assert metrics['test_nll'] == pytest.approx(nll.mean())
  assert metrics['test_loss'] == pytest.approx((w * nll).sum() / w.sum())
  assert metrics['test_pred_share_HOLD'] == pytest.approx(0.5)


def test_decisions_apply_the_bias_and_hold_when_unavailable():
  logits = np.array([[0.0, 0.5, 0.0], [np.nan] * 3])
  decision = load_config_file('pretrain', 'finetune').decision
  actions, confidence = compare.decisions(logits, decision)
  assert actions.tolist() == [1, 1] and confidence[1] == 0.0
  decision.logit_bias = (1.0, 0.0, 0.0)
  actions, confidence = compare.decisions(logits, decision)
  assert actions[0] == 0
  assert confidence[0] == pytest.approx(np.exp(1) / (np.exp(1) + np.exp(0.5) + 1))


@pytest.fixture(scope='module')
def comparison(tmp_path_factory):
  """A tiny pretrain -> LoRA fine-tune through the launcher (a few training steps each)."""
  workdir = tmp_path_factory.mktemp('compare')
  summary = compare.run_comparison(str(workdir), arms=('finetune',), tiny=True)
  return workdir, summary


@pytest.mark.slow
def test_finetune_keeps_the_pretrained_base_bit_for_bit(comparison):
  workdir, _ = comparison
  pretrained = traverse_util.flatten_dict(checkpoint.load_model(workdir / 'pretrain').params)
  tuned = checkpoint.load_model(workdir / 'finetune_seed0')
  labels = traverse_util.flatten_dict(model.param_labels(tuned.params))
  flat = traverse_util.flatten_dict(tuned.params)
  frozen = [k for k in flat if labels[k] == 'frozen']
  assert frozen
  for k in frozen:
    np.testing.assert_array_equal(flat[k], pretrained[k], err_msg='/'.join(k))
  # ... while the adapters did train.
  assert any(np.abs(v).max() > 0 for k, v in flat.items() if k[-1] == 'lora_B')


@pytest.mark.slow
def test_step_zero_of_finetuning_computes_the_pretrained_model(comparison):
  workdir, _ = comparison
  config = load_config_file('pretrain', 'finetune,tiny')
  config.train.init_from = str(workdir / 'pretrain')
  model_config = train.validate_config(config)
  sharding = NamedSharding(mesh.make_mesh(), P())
  params = initialization.initial_params(config, model_config, jax.random.key(0), sharding)
  flat = traverse_util.flatten_dict(params)
  lora_a = [np.asarray(v) for k, v in flat.items() if k[-1] == 'lora_A']
  lora_b = [np.asarray(v) for k, v in flat.items() if k[-1] == 'lora_B']
  assert len(lora_b) == 6 and all(a.any() for a in lora_a) and not any(b.any() for b in lora_b)
  pretrained = checkpoint.load_model(workdir / 'pretrain')
  states = jax.random.normal(jax.random.key(1), (3, 8, 60))
  start = model.FlagTrader(model_config).apply({'params': params}, states)
  reference = model.FlagTrader(pretrained.model_config).apply(
      {'params': pretrained.params}, states)
  np.testing.assert_allclose(np.asarray(start), np.asarray(reference), atol=1e-6)


def test_exported_adapters_rebuild_the_run_on_the_pretrained_base(comparison):
  workdir, summary = comparison
  record = summary['arms']['finetune'][0]['adapters']
  assert record['max_abs_logit_diff'] < 1e-5
  assert record['file_bytes'] < record['checkpoint_bytes']
  loaded = adapters.load_adapters(workdir / 'adapters' / record['file'])
  assert loaded.info['base_from'] == str(workdir / 'pretrain')
  rebuilt = adapters.apply_adapters(adapters.load_base_params(workdir / 'pretrain'), loaded)
  run = checkpoint.load_model(workdir / 'finetune_seed0').params
  for got, want in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(run), strict=True):
    np.testing.assert_array_equal(got, want)


def test_results_are_written(comparison):
  workdir, summary = comparison
  on_disk = json.loads((workdir / 'pretrain_compare.json').read_text())
  assert set(on_disk['arms']) == {'finetune', compare.REFERENCE}
  assert on_disk['test_data'] == 'btc_usdt_1h_2025_2026'
  assert sum(on_disk['test_label_shares']['shares'].values()) == pytest.approx(1.0)
  for records in on_disk['arms'].values():
    (record,) = records
    assert 0 <= record['test_balanced_accuracy'] <= 1 and record['test_nll'] > 0
    assert (record['backtest'] is not None) == compare.HAS_BACKTEST
  table = (workdir / 'pretrain_compare.md').read_text()
  assert table == compare.markdown_table(summary)
  rows = [line for line in table.splitlines() if line.startswith('| ')]
  assert rows[1].startswith('| finetune |') and rows[2].startswith(f'| {compare.REFERENCE} |')
