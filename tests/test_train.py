"""train_and_evaluate on the tiny config: learning, outputs, exact resume, divergence, config
errors; and the pieces it is built from (loss, data order, data preparation, gradients)."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config_file
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himari_jax import config as config_lib
from himari_jax.constants import ACTION_NAMES
from himari_jax.data import features, input_pipeline
from himari_jax.data import ohlcv as data
from himari_jax.inference import members, predict
from himari_jax.model import checkpoint, objectives
from himari_jax.model import flag_trader as model
from himari_jax.research import baselines
from himari_jax.training import initialization, mesh, preemption, tb_events, train, validation

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = f'{REPO / "configs" / "flag_trader.py"}:tiny'


def _records(workdir, kind):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['kind'] == kind]


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


@pytest.fixture(scope='module', autouse=True)
def persistent_compilation_cache(tmp_path_factory):
  """A persistent compilation cache for this module: reruns of an identical program (the
  rerun and divergence tests) load it instead of recompiling. Restored afterwards."""
  options = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  saved = {name: getattr(jax.config, name) for name in options}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One real tiny run (2 epochs of 20 steps) shared by the output tests."""
  config = load_config_file('flag_trader', 'tiny')
  workdir = str(tmp_path_factory.mktemp('tiny'))
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_tiny_run_learns_and_writes_every_output(trained):
  config, workdir, result = trained
  losses = [r['loss'] for r in _records(workdir, 'train')]
  assert len(losses) == 2 * 20 // config.train.log_every_steps
  assert np.mean(losses[-2:]) < losses[0] - 0.02
  val = _records(workdir, 'val')
  assert [r['epoch'] for r in val] == [1, 2]
  for r in val:
    assert np.sum(r['val_confusion']) > 0 and 0 <= r['val_accuracy'] <= 1
    assert sum(r[f'val_pred_share_{a}'] for a in ACTION_NAMES) == pytest.approx(1.0)
  # Latest two steps (30 mid-epoch, 40 epoch end) and the best epoch end (20 or 40).
  assert _steps(workdir)[-2:] == [30, 40] and result['best_step'] in (20, 40)
  for step in _steps(workdir):  # each with the manifest its restore checks
    assert os.path.exists(os.path.join(workdir, 'checkpoints', str(step), checkpoint.MANIFEST))
  assert os.path.isdir(result['best_checkpoint'])
  assert result['best_val_loss'] == min(r['val_loss'] for r in val)
  (event_file,) = os.listdir(os.path.join(workdir, 'tensorboard'))
  scalars = tb_events.read_scalars(os.path.join(workdir, 'tensorboard', event_file))
  assert [s for s, _ in scalars['train/loss']] == [r['step'] for r in _records(workdir, 'train')]
  assert len(scalars['val/val_accuracy']) == 2


def test_checkpoint_holds_what_inference_needs(trained):
  config, workdir, result = trained
  loaded = checkpoint.load_model(workdir)
  assert loaded.step == result['best_step']
  assert loaded.meta['feature_set'] == loaded.feature_set == 'himari'
  assert loaded.config.to_dict() == json.loads(json.dumps(config.to_dict()))
  raw = features.compute_features(
      data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True).iloc[-3000:])
  prepared = input_pipeline.prepare_data(config)
  np.testing.assert_allclose(loaded.normalizer.apply(raw), prepared.features, atol=1e-6)
  np.testing.assert_array_equal(loaded.meta['class_weights'], prepared.class_weights)


def test_rerunning_a_finished_run_resumes_without_training(trained):
  config, workdir, result = trained
  before = open(os.path.join(workdir, 'metrics.jsonl')).read()
  again = train.train_and_evaluate(config, workdir)
  assert again == result
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == before


def test_a_torn_last_metrics_record_is_dropped_with_a_warning(trained, tmp_path, caplog):
  config, workdir, result = trained
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  metrics = tmp_path / 'metrics.jsonl'
  before = metrics.read_text()
  metrics.write_text(before + '{"kind": "train", "step": 41, "loss": 0.9')  # killed mid-write
  with caplog.at_level('WARNING'):
    assert train.train_and_evaluate(config, str(tmp_path))['best_val_loss'] == (
        result['best_val_loss'])
  (warning,) = [r.getMessage() for r in caplog.records if 'torn' in r.getMessage()]
  assert warning.startswith(f'{metrics}: dropped its torn last line {before.count(chr(10)) + 1} ')
  assert metrics.read_text() == before
  metrics.write_text(before.replace('"kind"', '"kind', 1))  # not torn: a damaged first line
  with pytest.raises(ValueError, match=f'^{metrics} line 1: not a JSON record'):
    train.train_and_evaluate(config, str(tmp_path))


def test_appending_after_a_torn_line_starts_a_new_one(tmp_path):
  from himari_jax import json_types

  path = tmp_path / 'results.jsonl'
  path.write_text('{"a": 1}\n{"b": 2')
  json_types.append_jsonl(path, {'c': 3})
  assert json_types.read_jsonl(path) == [{'a': 1}, {'c': 3}]
  path.write_text('{"a": 1}')  # a whole record without its newline is kept
  json_types.append_jsonl(path, {'c': 3})
  assert path.read_text() == '{"a": 1}\n{"c": 3}\n'


def _delete_data_files(step_dir):
  for path in pathlib.Path(step_dir, 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.unlink()


def test_a_damaged_latest_step_is_set_aside_and_the_run_resumes_before_it(trained, tmp_path,
                                                                          caplog, capfd):
  config, workdir, result = trained
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  _delete_data_files(tmp_path / 'checkpoints' / '40')
  with caplog.at_level('WARNING'):
    again = train.train_and_evaluate(config, str(tmp_path))
  (warning,) = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'
                and 'checkpoint step' in r.getMessage()]
  assert warning.startswith('checkpoint step 40 is damaged: ') and warning.endswith(
      f'moved it to {tmp_path / checkpoint.DAMAGED_SUBDIR / "40"} and resuming from step 30')
  # Steps 31-40 replayed: the same run as the uninterrupted one.
  assert {k: v for k, v in again.items() if k != 'best_checkpoint'} == {
      k: v for k, v in result.items() if k != 'best_checkpoint'}
  assert _records(tmp_path, 'val') == _records(workdir, 'val')
  assert 'Traceback' not in capfd.readouterr().err


def test_divergence_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path, monkeypatch):
  config, workdir, _ = trained
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  shutil.rmtree(tmp_path / 'checkpoints' / '40')  # resume at step 30 ...
  prepared = input_pipeline.prepare_data(config)
  poisoned = dataclasses.replace(prepared, features=np.full_like(prepared.features, np.nan))
  monkeypatch.setattr(input_pipeline, 'prepare_data', lambda _: poisoned)  # ... on corrupt inputs
  with pytest.raises(train.TrainingDivergedError,
                     match='diverged at step 31: loss=nan.*last good checkpoint is step 30'):
    train.train_and_evaluate(config, str(tmp_path))
  assert _steps(tmp_path) == [s for s in _steps(workdir) if s <= 30]


def _launch(workdir, *overrides, env):
  return [sys.executable, str(REPO / 'launch' / 'train.py'), f'--config={TINY}',
          f'--workdir={workdir}', *overrides]


@pytest.fixture(scope='module')
def subprocess_env(tmp_path_factory):
  """Child processes share a compilation cache; the low XLA optimisation level compiles
  several times faster (the tiny model's run time is negligible either way)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
              XLA_FLAGS='--xla_backend_optimization_level=0', JAX_PLATFORMS='cpu')


def _resume_and_compare(reference, resumed, overrides, env, *, final_step):
  """Reruns the interrupted run to the end: its last checkpoint equals the uninterrupted one."""
  subprocess.run(_launch(resumed, *overrides, env=env), env=env, check=True,
                 capture_output=True, timeout=300)
  want = checkpoint.load_model(reference, 'latest')
  got = checkpoint.load_model(resumed, 'latest')
  assert want.step == got.step == final_step
  jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
  assert got.meta['epoch_metrics'] == want.meta['epoch_metrics']


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['classification', 'sharpe'])
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, subprocess_env, objective):
  overrides = ['--config.train.num_epochs=1', '--config.train.steps_per_epoch=150',
               '--config.train.checkpoint_every_steps=25', '--config.train.log_every_steps=50']
  if objective == 'sharpe':  # the net-of-cost objective resumes like the classifier (#17)
    overrides += ['--config.train.objective=sharpe', '--config.train.best_metric=-val_net_sharpe']
  reference, resumed = tmp_path / 'reference', tmp_path / 'resumed'
  subprocess.run(_launch(reference, *overrides, env=subprocess_env), env=subprocess_env,
                 check=True, capture_output=True, timeout=300)

  victim = subprocess.Popen(_launch(resumed, *overrides, env=subprocess_env),
                            env=subprocess_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (os.path.isdir(resumed / 'checkpoints') and _steps(resumed)):
    assert victim.poll() is None and time.time() < deadline, 'no checkpoint before exit'
    time.sleep(0.01)
  victim.send_signal(signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL
  assert 150 not in _steps(resumed)  # killed part-way

  _resume_and_compare(reference, resumed, overrides, subprocess_env, final_step=150)


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['classification', 'sharpe'])
def test_sigterm_saves_exits_cleanly_and_resumes_bit_identically(tmp_path, subprocess_env,
                                                                 objective):
  overrides = ['--config.train.num_epochs=1', '--config.train.steps_per_epoch=200',
               '--config.train.checkpoint_every_steps=0', '--config.train.log_every_steps=10',
               f'--config.train.objective={objective}']
  if objective == 'sharpe':
    overrides.append('--config.train.best_metric=-val_net_sharpe')
  reference, resumed = tmp_path / 'reference', tmp_path / 'resumed'
  subprocess.run(_launch(reference, *overrides, env=subprocess_env), env=subprocess_env,
                 check=True, capture_output=True, timeout=300)

  victim = subprocess.Popen(_launch(resumed, *overrides, env=subprocess_env),
                            env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  deadline = time.time() + 300
  while not (os.path.exists(resumed / 'metrics.jsonl') and _records(resumed, 'train')):
    assert victim.poll() is None and time.time() < deadline, 'no training step logged'
    time.sleep(0.01)
  victim.send_signal(signal.SIGTERM)
  _, stderr = victim.communicate(timeout=120)
  assert victim.returncode == 0, stderr[-2000:]
  (stopped,) = _steps(resumed)  # no periodic saves: the one checkpoint is the pre-emption's
  assert 10 <= stopped < 200, 'the run ended before the signal; make it longer'
  assert f'pre-empted by SIGTERM: stopped at step {stopped} of 200' in stderr
  assert _records(resumed, 'train')[-1]['step'] == stopped  # metrics flushed up to the stop
  assert not [d for d in os.listdir(resumed / 'checkpoints') if 'tmp' in d]

  _resume_and_compare(reference, resumed, overrides, subprocess_env, final_step=200)


def test_preemption_guard_turns_a_signal_into_a_stop_request():
  # From Python's own SIGINT handler (a shell's background job starts with SIGINT ignored).
  outside = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with preemption.PreemptionGuard() as guard:
      assert guard.requested is None
      signal.raise_signal(signal.SIGINT)  # first signal: a request, no KeyboardInterrupt
      assert guard.requested == 'SIGINT'
      with pytest.raises(KeyboardInterrupt):  # second: the previous handler, at once
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, outside)


def test_bad_configs_fail_fast_with_the_fix(tiny_config, tmp_path, subprocess_env):
  with pytest.raises(ValueError, match='valid variants: seed, seed_long, small, tiny'):
    load_config_file('flag_trader', 'huge')
  config = tiny_config.copy_and_resolve_references()
  config.data.train = 'btc_usdt_1h_2020_2024,missing/eth.csv'
  with pytest.raises(train.ConfigError, match="'missing/eth.csv' is neither a builtin"):
    train.train_and_evaluate(config, str(tmp_path / 'a'))
  config = tiny_config.copy_and_resolve_references()
  config.train.context_length = 32
  with pytest.raises(train.ConfigError, match='raise --config.model.max_length'):
    train.validate_config(config)
  config = tiny_config.copy_and_resolve_references()
  config.train.class_weights = 'balanced'
  with pytest.raises(train.ConfigError, match="use one of fixed, inverse, sqrt, none"):
    train.validate_config(config)
  # From the command line: a non-zero exit naming the field, before any training.
  failed = subprocess.run(_launch(tmp_path / 'b', '--config.data.train=nowhere.csv',
                                  env=subprocess_env),
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
  assert failed.returncode == 1 and 'Traceback' not in failed.stderr
  assert failed.stderr.strip().splitlines()[-1].startswith("error: config.data.train: "
                                                           "'nowhere.csv' is neither")
  assert not os.path.exists(tmp_path / 'b' / 'checkpoints')
  verbose = subprocess.run(_launch(tmp_path / 'b', '--config.model.causal=False', '--verbose',
                                   env=subprocess_env),
                           env=subprocess_env, capture_output=True, text=True, timeout=120)
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr
  assert 'ConfigError: config.model.causal=False' in verbose.stderr


def test_a_second_run_on_one_workdir_is_refused_and_writes_nothing(tmp_path, subprocess_env,
                                                                     lock_holder):
  holder = lock_holder('from himari_jax.training import train\n'
                       'held = train.lock_workdir(sys.argv[1])\nheld.__enter__()', tmp_path)
  done = subprocess.run(_launch(tmp_path, env=subprocess_env), env=subprocess_env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path / train.WORKDIR_LOCK}: the training workdir {tmp_path} is in use by '
      f'process {holder.pid} (it holds this lock); wait for it to finish or stop it, or use '
      'another folder')
  assert os.listdir(tmp_path) == [train.WORKDIR_LOCK]


def test_init_from_a_damaged_run_is_one_line(trained, tmp_path, subprocess_env):
  _, workdir, _ = trained
  shutil.copytree(workdir, tmp_path / 'damaged')
  for step in _steps(workdir):  # a run saved before manifests: the read itself fails
    os.remove(tmp_path / 'damaged' / 'checkpoints' / str(step) / checkpoint.MANIFEST)
    _delete_data_files(tmp_path / 'damaged' / 'checkpoints' / str(step))
  done = subprocess.run(_launch(tmp_path / 'new', f'--config.train.init_from={tmp_path}/damaged',
                                env=subprocess_env),
                        env=subprocess_env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  (line,) = [line for line in done.stderr.splitlines() if 'error' in line.lower()]
  assert line.startswith('error: checkpoint step ') and 'cannot be restored' in line
  assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('field, value, message', [
    ('labels.threshold', -0.01, '--config.labels.threshold=-0.01: must be > 0'),
    ('data.max_bars', 0, '--config.data.max_bars=0: must be >= 1 or None'),
    ('model.d_model', 0, '--config.model.d_model=0: must be >= 1'),
    ('train.eval_batch_size', 0, '--config.train.eval_batch_size=0: must be >= 1'),
    ('train.warmup_steps', -1, '--config.train.warmup_steps=-1: must be >= 0'),
    ('train.grad_clip', -1.0, '--config.train.grad_clip=-1.0: must be >= 0'),
    ('data.embargo', -1, '--config.data.embargo=-1: must be >= 0 or None'),
    ('train.keep_latest', 0, '--config.train.keep_latest=0: must be >= 1'),
    ('train.learning_rate', float('nan'), '--config.train.learning_rate=nan: must be > 0'),
    ('data.val_fraction', 1.0, '--config.data.val_fraction=1.0: must be in (0, 1)'),
])
def test_a_numeric_field_out_of_range_is_refused_naming_the_flag(tiny_config, field, value,
                                                                   message):
  section, name = field.split('.')
  tiny_config[section][name] = value
  with pytest.raises(train.ConfigError, match=f'^{re.escape(message)}$'):
    train.validate_config(tiny_config)


def test_unmasked_windows_are_refused_in_training(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.model.causal = False
  with pytest.raises(train.ConfigError, match='set --config.model.causal=True, or '
                     '--config.train.context_length=1'):
    train.validate_config(config)
  config.train.context_length = 1  # the unmasked original at T = 1 is fine
  train.validate_config(config)


def test_dry_run_compiles_the_step_and_reports_its_cost(tmp_path, subprocess_env):
  done = subprocess.run(_launch(tmp_path / 'run', '--dry_run', env=subprocess_env),
                        env=subprocess_env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  (line,) = [x for x in done.stderr.splitlines() if 'dry run on' in x]
  assert 'batch 8, context 8' in line and 'peak memory' in line and 'GFLOP/step' in line
  assert 'fits' in done.stderr
  assert not os.path.exists(tmp_path / 'run')  # nothing trained, nothing written


def test_weighted_cross_entropy_matches_pytorch_semantics():
  logits = jnp.asarray([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
  targets = jnp.asarray([[0, 2, 1]])
  mask = jnp.asarray([[True, True, False]])
  weights = jnp.asarray([2.5, 0.83, 2.5])
  loss, aux = train.weighted_cross_entropy(logits, targets, mask, weights)
  log_p = jax.nn.log_softmax(logits[0, :2], axis=-1)
  nll = -np.asarray([log_p[0, 0], log_p[1, 2]])
  # torch.nn.CrossEntropyLoss(weight=w): sum(w[y] * nll) / sum(w[y]); the masked row is out.
  assert float(loss) == pytest.approx(float((2.5 * nll[0] + 2.5 * nll[1]) / 5.0), rel=1e-6)
  assert float(aux['accuracy']) == 0.5


def test_epoch_order_is_a_function_of_seed_and_epoch():
  a = input_pipeline.epoch_order(0, 3, 100, 250)
  np.testing.assert_array_equal(a, input_pipeline.epoch_order(0, 3, 100, 250))
  assert not np.array_equal(a, input_pipeline.epoch_order(0, 4, 100, 250))
  assert not np.array_equal(a, input_pipeline.epoch_order(1, 3, 100, 250))
  assert sorted(a[:100]) == list(range(100)) and sorted(a[100:200]) == list(range(100))


def test_prepare_data_splits_with_embargo_and_fits_on_training_rows(tiny_config):
  prepared = input_pipeline.prepare_data(tiny_config)
  t = tiny_config.train.context_length
  embargo = prepared.summary['embargo']
  assert embargo == tiny_config.labels.horizon
  (info,) = prepared.summary['files']
  val_start = info['bars'] - info['val_bars']
  assert prepared.train_ends.max() < val_start - embargo
  assert prepared.train_ends.min() >= features.WARMUP_BARS + t - 1
  assert prepared.val_ends.min() >= val_start and prepared.valid[prepared.val_ends].all()
  df = data.builtin_dataset('btc_usdt_1h_2020_2024', fill_gaps=True).iloc[-3000:]
  raw = features.compute_features(df)
  expected = features.Normalizer.fit(raw[features.WARMUP_BARS:val_start - embargo])
  np.testing.assert_allclose(prepared.normalizer.mean, expected.mean, rtol=1e-5, atol=1e-6)
  batch = input_pipeline.gather_batch(prepared, prepared.train_ends[:4], t)
  assert batch['inputs'].shape == (4, t, 60) and batch['targets'].shape == (4, t)
  assert batch['mask'].dtype == bool


def test_collapsed_predictions_are_flagged():
  confusion = np.asarray([[1, 9, 0], [0, 80, 0], [0, 9, 1]], np.float32)
  sums = {'confusion': confusion, 'count': 100.0, 'weighted_nll': 50.0, 'weight': 100.0,
          'nll': 60.0}
  metrics = validation.validation_metrics(sums, collapse_threshold=0.85)
  assert metrics['val_collapsed'] and metrics['val_collapsed_to'] == 'HOLD'
  assert metrics['val_pred_share_HOLD'] == pytest.approx(0.98)
  assert metrics['val_accuracy_SELL'] == pytest.approx(0.1)
  assert not validation.validation_metrics(sums, collapse_threshold=0.99)['val_collapsed']


def test_init_from_a_run_starts_from_its_best_params(trained):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.train.init_from = workdir
  sharding = NamedSharding(mesh.make_mesh(), P())
  params = initialization.initial_params(config, model.ModelConfig.from_config(config.model),
                                         jax.random.PRNGKey(0), sharding)
  jax.tree.map(np.testing.assert_array_equal, params, checkpoint.load_model(workdir).params)
  config.model.d_model = 32
  with pytest.raises(train.ConfigError, match='set the --config.model.* sizes'):
    initialization.initial_params(config, model.ModelConfig.from_config(config.model),
                                  jax.random.PRNGKey(0), sharding)


def test_feature_sets_in_training_config_checks(trained, tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.feature_set = 'seed_exact'
  with pytest.raises(train.ConfigError, match='--config.data.allow_lookahead=True'):
    train.validate_config(config)
  config.data.allow_lookahead = True  # reproduction of the seed, knowingly
  train.validate_config(config)
  # Fine-tuning a run on another feature set would feed its weights other inputs.
  _, workdir, _ = trained
  config = tiny_config.copy_and_resolve_references()
  config.train.init_from = workdir
  config.data.feature_set = 'seed_causal'
  sharding = NamedSharding(mesh.make_mesh(), P())
  with pytest.raises(train.ConfigError, match="trained on feature set 'himari'.*"
                     "--config.data.feature_set=himari"):
    initialization.initial_params(config, model.ModelConfig.from_config(config.model),
                                  jax.random.PRNGKey(0), sharding)


def test_sharpe_objective_trains_a_position_model(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.train.objective = 'sharpe'
  config.train.best_metric = '-val_net_sharpe'
  result = train.train_and_evaluate(config, str(tmp_path))
  steps = _records(tmp_path, 'train')
  assert all(np.isfinite(r['sharpe']) and 0 <= r['turnover'] for r in steps)
  val = _records(tmp_path, 'val')
  assert [r['epoch'] for r in val] == [1, 2]
  for r in val:
    assert r['val_bars'] > 100 and 0 < r['val_mean_abs_position'] <= 1
    assert np.isfinite([r['val_net_sharpe'], r['val_ic'], r['val_turnover_per_year']]).all()
    assert r['val_net_sharpe'] < r['val_gross_sharpe']  # costs are charged
  assert result['best_val_net_sharpe'] == max(r['val_net_sharpe'] for r in val)
  loaded = checkpoint.load_model(tmp_path)
  assert loaded.step == result['best_step'] and loaded.objective == 'sharpe'


def test_reinforce_trains_a_policy_validated_by_its_greedy_play(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.train.objective = 'reinforce'
  config.train.best_metric = '-val_net_sharpe'
  config.train.learning_rate = 0.01  # moves the tiny model's greedy action off HOLD in 20 steps
  result = train.train_and_evaluate(config, str(tmp_path))
  steps = _records(tmp_path, 'train')
  assert all(np.isfinite([r['loss'], r['mean_reward'], r['entropy']]).all() for r in steps)
  assert all(0 < r['entropy'] <= np.log(3) + 1e-6 for r in steps)
  val = _records(tmp_path, 'val')
  # A policy that never trades has no Sharpe ratio (NaN) and ranks last.
  assert result['best_val_net_sharpe'] == np.nanmax([r['val_net_sharpe'] for r in val])
  loaded = checkpoint.load_model(tmp_path)
  assert loaded.objective == 'reinforce'
  with pytest.raises(ValueError, match='scores actions and has no positions'):
    predict.predicted_positions(loaded, None)
  # The benchmark reads it like a classifier (probabilities, not a position); a backtest does
  # not fit its probabilities to the label rates it never trained on.
  assert not baselines.make_baseline('flag_trader', path=str(tmp_path)).outputs_position
  calibration, summary = members.fit_member_calibration(
      loaded, config_lib.backtest_config().calibration)
  assert 'objective reinforce' in summary['skipped']
  np.testing.assert_array_equal(calibration.bias, 0.0)
  # The best step's validation, played by hand: the greedy action at every validation bar
  # from its own window, held by the backtester's rules (HOLD keeps the position), net of
  # costs.
  prepared = input_pipeline.prepare_data(config)
  ends = prepared.val_ends
  logits = predict.predict_logits_from_features(
      loaded.params, loaded.model_config, prepared.features, config.train.context_length,
      bars=ends)[ends]
  mask = prepared.trade_mask[ends]
  held = np.zeros(len(ends))
  for i, action in enumerate(np.argmax(logits, -1)):
    held[i] = held[i - 1] if i else 0.0
    if mask[i] and action != 1:
      held[i] = 1.0 if action == 2 else -1.0
  objective = objectives.TradingObjective.from_config(config.train)
  by_hand = objectives.evaluate_positions(held, prepared.forward_returns[ends], mask, objective)
  best = next(r for r in val if r['step'] == result['best_step'])
  assert best['val_turnover_per_year'] > 0  # the greedy policy trades
  for name in ('val_net_sharpe', 'val_gross_sharpe', 'val_turnover_per_year',
               'val_mean_abs_position'):
    np.testing.assert_allclose(best[name], by_hand[name], rtol=1e-4, atol=1e-6, err_msg=name)
  assert best['val_net_sharpe'] < best['val_gross_sharpe']  # costs are charged


def test_trading_objective_config_errors_name_the_fix(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.train.objective = 'profit'
  with pytest.raises(train.ConfigError, match="config.train.objective='profit' is unknown"):
    train.validate_config(config)
  config.train.objective = 'sharpe'
  config.train.best_metric = 'val_nll'  # a classifier's metric (val_loss has both meanings)
  with pytest.raises(train.ConfigError, match="not reported for objective 'sharpe'.*"
                     "-val_net_sharpe"):
    train.validate_config(config)
  config.train.best_metric = '-val_net_sharpe'
  config.train.cost_multiplier = -1.0
  with pytest.raises(train.ConfigError, match='config.train.cost_multiplier=-1.0'):
    train.validate_config(config)
  config.train.cost_multiplier = 1.0
  config.train.context_length = 1
  with pytest.raises(train.ConfigError, match='context_length >= 2'):
    train.validate_config(config)
  config = tiny_config.copy_and_resolve_references()
  config.train.best_metric = '-val_net_sharpe'
  with pytest.raises(train.ConfigError, match="objective 'classification'"):
    train.validate_config(config)
