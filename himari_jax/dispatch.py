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

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Trial = TypeVar('Trial')
Result = TypeVar('Result')


def _ray():
  try:
    import ray  # noqa: PLC0415 - optional dependency, needed only with an address
  except ImportError as e:
    raise ImportError("ray_address needs Ray: pip install 'himari-jax[ray]'") from e
  return ray


def trial_resources(cluster: dict[str, float], gpus_per_trial: float | None = None
                    ) -> dict[str, float]:
  """Ray task resources of one trial: a whole GPU when the cluster has any, else one CPU."""
  if gpus_per_trial is None:
    gpus_per_trial = 1.0 if cluster.get('GPU', 0) > 0 else 0.0
  return {'num_gpus': gpus_per_trial} if gpus_per_trial > 0 else {'num_cpus': 1}


def run_trials(fn: Callable[[Trial], Result], trials: Sequence[Trial],
               ray_address: str | None = None, *, gpus_per_trial: float | None = None,
               runtime_env: dict[str, Any] | None = None) -> list[Result]:
  """`[fn(t) for t in trials]`, run here or as Ray tasks on the cluster at `ray_address`.

  Args:
    fn: one trial; with Ray it is pickled (cloudpickle) to the workers, so it must not hold
      open files or device arrays, and it should return small results (metrics, paths).
    trials: picklable descriptions of the trials (dicts of settings, fold indices, seeds).
    ray_address: None runs in-process; otherwise `ray.init(address=...)`: 'auto' (a cluster
      this node belongs to), 'ray://head:10001', or 'local' (a fresh local instance). An
      already initialised Ray connection is reused.
    gpus_per_trial: Ray GPUs per trial; default one when the cluster has GPUs.
    runtime_env: passed to `ray.init` (e.g. {'working_dir': '.'} to ship the sources).

  Returns:
    The results, in the order of `trials`. A failing trial raises its exception (with Ray,
    wrapped in `ray.exceptions.RayTaskError`) after the others were submitted.
  """
  if ray_address is None:
    return [fn(trial) for trial in trials]
  ray = _ray()
  if not ray.is_initialized():
    ray.init(address=ray_address, runtime_env=runtime_env, log_to_driver=False)
  remote = ray.remote(**trial_resources(ray.cluster_resources(), gpus_per_trial))(fn)
  return ray.get([remote.remote(trial) for trial in trials])
