"""Trial dispatch: in-process, and on a local Ray instance with the same results."""

import json
import os

import numpy as np
import pytest

from himari_jax import dispatch


def make_trial_fn(results_dir):
  """A trial that writes its result file (the caller's resumption record) and returns it."""

  def run_trial(trial):
    from himari_jax import metrics  # noqa: PLC0415 - imported where the trial runs

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


# ray.init starts its raylet with fork+exec (no Python runs in the child), which JAX warns about.
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_two_trials_on_local_ray_match_in_process(tmp_path):
  ray = pytest.importorskip('ray')
  for name in ('local', 'ray'):
    os.makedirs(tmp_path / name)
  local = dispatch.run_trials(make_trial_fn(str(tmp_path / 'local')), TRIALS)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    remote = dispatch.run_trials(make_trial_fn(str(tmp_path / 'ray')), TRIALS,
                                 ray_address='local')
  finally:
    ray.shutdown()
  assert [r['seed'] for r in remote] == [1, 2]
  assert all(r['pid'] != os.getpid() for r in remote)  # really ran in Ray workers
  for here, there in zip(local, remote, strict=True):
    assert here['mean'] == there['mean']
  assert sorted(os.listdir(tmp_path / 'ray')) == ['trial_1.json', 'trial_2.json']
