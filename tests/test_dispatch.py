"""Trial dispatch: in-process, and on a local Ray instance with the same results."""

import json
import os

import numpy as np
import pytest

from himari_jax.research import dispatch


def make_trial_fn(results_dir):
  """A trial that writes its result file (the caller's resumption record) and returns it."""

  def run_trial(trial):
    from himari_jax.stats import metrics  # noqa: PLC0415 - imported where the trial runs

    rng = np.random.default_rng(trial['seed'])
    equity = (100.0 * np.cumprod(1 + trial['scale'] * rng.standard_normal(500))).astype(
        np.float32)
    returns = metrics.period_returns(equity, 100.0)
    result = {'seed': trial['seed'], 'mean': float(np.mean(returns)), 'pid': os.getpid()}
    with open(os.path.join(results_dir, f'trial_{trial["seed"]}.json'), 'w') as f:
      json.dump(result, f)
    return result

  return run_trial


TRIALS = [{'seed': 1, 'scale': 0.01}, {'seed': 2, 'scale': 0.02}]


def test_in_process_runs_only_the_trials_without_a_result_file(tmp_path):
  fn = make_trial_fn(str(tmp_path))
  first = dispatch.run_trials(fn, TRIALS[:1])
  assert first[0]['pid'] == os.getpid() and (tmp_path / 'trial_1.json').exists()
  pending = [t for t in TRIALS if not (tmp_path / f'trial_{t["seed"]}.json').exists()]
  assert [r['seed'] for r in dispatch.run_trials(fn, pending)] == [2]


def test_resources_are_one_gpu_per_trial_when_the_cluster_has_gpus():
  assert dispatch.trial_resources({'CPU': 32.0, 'GPU': 4.0}) == {'num_gpus': 1.0}
  assert dispatch.trial_resources({'CPU': 2.0}) == {'num_cpus': 1}
  assert dispatch.trial_resources({'GPU': 4.0}, gpus_per_trial=0.5) == {'num_gpus': 0.5}
  # A CPU trial beside GPU trials keeps JAX off the GPUs Ray leaves visible to it.
  assert dispatch.trial_resources({'CPU': 32.0, 'GPU': 4.0}, gpus_per_trial=0.0) == {
      'num_cpus': 1, 'runtime_env': {'env_vars': {'JAX_PLATFORMS': 'cpu'}}}


def test_each_result_is_passed_on_as_soon_as_its_trial_is_done(tmp_path):
  seen = []
  fn = make_trial_fn(str(tmp_path))

  def on_result(i, result):
    seen.append((i, result['seed']))
    # Trial i's result arrives before trial i + 1 starts.
    assert not (tmp_path / f'trial_{TRIALS[i]["seed"] + 1}.json').exists()

  results = dispatch.run_trials(fn, TRIALS, on_result=on_result)
  assert seen == [(0, 1), (1, 2)] and [r['seed'] for r in results] == [1, 2]


# ray.init starts its raylet with fork+exec (no Python runs in the child), which JAX warns about.
@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_two_trials_on_local_ray_match_in_process(tmp_path):
  ray = pytest.importorskip('ray')
  for name in ('local', 'ray'):
    os.makedirs(tmp_path / name)
  local = dispatch.run_trials(make_trial_fn(str(tmp_path / 'local')), TRIALS)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    seen = {}
    remote = dispatch.run_trials(make_trial_fn(str(tmp_path / 'ray')), TRIALS,
                                 ray_address='local', uses_gpu=lambda t: t['seed'] == 1,
                                 on_result=lambda i, r: seen.setdefault(i, r['seed']))
  finally:
    ray.shutdown()
  assert [r['seed'] for r in remote] == [1, 2] and seen == {0: 1, 1: 2}
  assert all(r['pid'] != os.getpid() for r in remote)  # really ran in Ray workers
  for here, there in zip(local, remote, strict=True):
    assert here['mean'] == there['mean']
  assert sorted(os.listdir(tmp_path / 'ray')) == ['trial_1.json', 'trial_2.json']


@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_ray_workers_share_the_compilation_cache(tmp_path):
  ray = pytest.importorskip('ray')
  import jax  # noqa: PLC0415

  options = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  saved = {name: getattr(jax.config, name) for name in options}
  try:
    jax.config.update('jax_compilation_cache_dir', None)  # the suite's own cache is set
    cache = dispatch.share_compilation_cache(str(tmp_path / 'cache'), 'local')
    seen = dispatch.run_trials(
        lambda _: (jax.config.jax_compilation_cache_dir,
                   jax.config.jax_persistent_cache_min_compile_time_secs), [0], 'local')
  finally:
    ray.shutdown()
    for name, value in saved.items():
      jax.config.update(name, value)
  assert cache == str(tmp_path / 'cache') and jax.config.jax_compilation_cache_dir != cache
  assert seen == [(cache, saved['jax_persistent_cache_min_compile_time_secs'])]


@pytest.mark.extra
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_a_failing_trial_on_ray_raises_after_the_others_are_stored(tmp_path):
  ray = pytest.importorskip('ray')
  run_trial = make_trial_fn(str(tmp_path))

  def fn(trial):
    if trial['seed'] == 1:
      raise ValueError('trial 1 failed')
    return run_trial(trial)

  stored = []
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    with pytest.raises(ray.exceptions.RayTaskError, match='trial 1 failed'):
      dispatch.run_trials(fn, [*TRIALS, {'seed': 3, 'scale': 0.03}], ray_address='local',
                          on_result=lambda i, r: stored.append((i, r['seed'])))
  finally:
    ray.shutdown()
  assert sorted(stored) == [(1, 2), (2, 3)]  # both other trials finished and were stored
  assert sorted(os.listdir(tmp_path)) == ['trial_2.json', 'trial_3.json']
