"""Independent trials (walk-forward folds, benchmark trials, seeds): in-process or on Ray.

`run_trials(fn, trials)` calls `fn(trial)` for each trial in order, in this process. With
`ray_address` it runs each call as a Ray task instead, one trial per GPU when the cluster has
GPUs (one per CPU otherwise), and returns the results in the order of `trials`, exactly as
in-process. Training inside one trial still spans its GPU with `jax.jit`; Ray only places
whole trials.

Resumption belongs to the caller, the same way in both modes: `fn` writes its result file
into the trial's own folder (on storage every node sees) and the caller passes only the
trials without one, e.g. `[t for t in trials if not os.path.exists(result_path(t))]`.

Ray is optional (`pip install 'himari-jax[ray]'`); it is imported only when an address is
given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

from himari_jax import extras

Trial = TypeVar('Trial')
Result = TypeVar('Result')


def _ray(ray_address: str) -> Any:
  return extras.import_extra('ray', 'ray', f'--ray_address={ray_address}')


def connect(ray_address: str, *, runtime_env: dict[str, Any] | None = None,
            env_vars: dict[str, str] | None = None) -> None:
  """`ray.init(address=ray_address)` unless this process is connected already.

  `env_vars` are set in every worker of this job, e.g. {'JAX_COMPILATION_CACHE_DIR': path}
  so that the trials share their compiled programs as the in-process runs do.
  """
  ray = _ray(ray_address)
  if ray.is_initialized():
    return
  runtime_env = dict(runtime_env or {})
  if env_vars:
    runtime_env['env_vars'] = {**runtime_env.get('env_vars', {}), **env_vars}
  ray.init(address=ray_address, runtime_env=runtime_env or None, log_to_driver=False)


def share_compilation_cache(cache_dir: str, ray_address: str | None = None) -> str:
  """Caches compiled programs in `cache_dir` for this process and, with `ray_address`, for
  the Ray workers of this job too (every trial of a grid compiles the same programs), unless
  JAX_COMPILATION_CACHE_DIR already names a folder. Returns the folder used."""
  cache_dir = jax.config.jax_compilation_cache_dir or os.path.abspath(cache_dir)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  if ray_address is not None:
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    connect(ray_address, env_vars={
        'JAX_COMPILATION_CACHE_DIR': cache_dir,
        'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': str(min_seconds)})
  return cache_dir


def trial_resources(cluster: dict[str, float], gpus_per_trial: float | None = None
                    ) -> dict[str, Any]:
  """Ray task options of one trial: a whole GPU when the cluster has any, else one CPU.

  A CPU trial on a cluster with GPUs (`gpus_per_trial=0`) also gets `JAX_PLATFORMS=cpu`:
  Ray leaves the GPUs visible to tasks that asked for none, and JAX would otherwise take
  most of a GPU's memory that a GPU trial holds.
  """
  if gpus_per_trial is None:
    gpus_per_trial = 1.0 if cluster.get('GPU', 0) > 0 else 0.0
  if gpus_per_trial > 0:
    return {'num_gpus': gpus_per_trial}
  if cluster.get('GPU', 0) > 0:
    return {'num_cpus': 1, 'runtime_env': {'env_vars': {'JAX_PLATFORMS': 'cpu'}}}
  return {'num_cpus': 1}


def _call(fn: Callable[[Trial], Result], trial: Trial) -> Result:
  """The Ray task: `fn` may be any picklable callable (a function, a closure, an object)."""
  return fn(trial)


def run_trials(fn: Callable[[Trial], Result], trials: Sequence[Trial],
               ray_address: str | None = None, *, gpus_per_trial: float | None = None,
               uses_gpu: Callable[[Trial], bool] | None = None,
               on_result: Callable[[int, Result], None] | None = None,
               runtime_env: dict[str, Any] | None = None) -> list[Result]:
  """`[fn(t) for t in trials]`, run here or as Ray tasks on the cluster at `ray_address`.

  Args:
    fn: one trial, a function or any callable object; with Ray it is pickled (cloudpickle)
      into the object store once, so it must not hold open files or device arrays, and it
      should return small results (metrics, paths).
    trials: picklable descriptions of the trials (dicts of settings, fold indices, seeds).
    ray_address: None runs in-process; otherwise `ray.init(address=...)`: 'auto' (a cluster
      this node belongs to), 'ray://head:10001', or 'local' (a fresh local instance). An
      already initialised Ray connection is reused.
    gpus_per_trial: Ray GPUs per trial; default one when the cluster has GPUs.
    uses_gpu: trials for which it returns False run on one CPU (`trial_resources` with no
      GPU), e.g. a rule baseline beside FLAG-TRADER trials; default: every trial may.
    on_result: called as `on_result(i, result)` in this process as soon as trial `i` is done
      (in-process: in order; with Ray: in the order they finish), so that the caller can
      store each result at once and an interrupted run loses only the trials in flight.
    runtime_env: passed to `ray.init` (e.g. {'working_dir': '.'} to ship the sources) when
      this process is not connected yet (`connect`).

  Returns:
    The results, in the order of `trials`. A failing trial raises its exception: in-process
    at once, the later trials not run; with Ray (wrapped in `ray.exceptions.RayTaskError`)
    once every other trial has finished and been passed to `on_result`, so nothing that
    ran is lost (the first failing trial's, in the order of `trials`, when several fail).
  """
  if ray_address is None:
    results = []
    for i, trial in enumerate(trials):
      results.append(fn(trial))
      if on_result is not None:
        on_result(i, results[-1])
    return results
  ray = _ray(ray_address)
  connect(ray_address, runtime_env=runtime_env)
  cluster = ray.cluster_resources()
  remote = ray.remote(_call)
  fn_ref = ray.put(fn)  # shipped once, not with every task
  options = {True: trial_resources(cluster, gpus_per_trial),
             False: trial_resources(cluster, 0.0)}
  pending = {remote.options(**options[uses_gpu is None or bool(uses_gpu(trial))]).remote(
      fn_ref, trial): i for i, trial in enumerate(trials)}
  results: list[Any] = [None] * len(trials)
  failed: list[tuple[int, BaseException]] = []
  while pending:
    ready, _ = ray.wait(list(pending), num_returns=1)
    i = pending.pop(ready[0])
    try:
      results[i] = ray.get(ready[0])
    except Exception as e:  # noqa: BLE001 - raised below, once the others are stored
      failed.append((i, e))
      continue
    if on_result is not None:
      on_result(i, results[i])
  if failed:
    # The other trials were running anyway: their results are stored (on_result) first.
    raise min(failed, key=lambda f: f[0])[1]
  return results
