"""LoRA adapters as small files: extract, save, load, apply (swap) and merge.

An adapter set is every leaf that `model.param_labels(params, freeze_base=True)` marks
'trainable': `lora_A` / `lora_B`, the LayerNorms, both embeddings and the action head, i.e.
the whole model except the frozen base Linears (3.3 % of the parameters at seed sizes). One
frozen base serves many adapter sets (per asset, per regime): `apply_adapters` puts a set on
the base, replacing whatever adapters the tree held, and `merge_adapters` folds it into the
base kernels (`model.merge_lora`) for one matmul per projection at inference.

Identity of the base: `base_fingerprint` is a SHA-256 of the frozen leaves (path, dtype,
shape, bytes). An adapter file records the fingerprint of the base it was trained on and
`apply_adapters` refuses any other base, so adapters never silently run on wrong weights.

File format: one `.npz` (numpy's zip of `.npy` arrays, read with `allow_pickle=False`) that
holds each adapter leaf under its '/'-joined path plus `__header__`, UTF-8 JSON bytes:

  format, version    'himari-jax-adapters', 1
  model_config       the `ModelConfig` fields
  base_fingerprint   the SHA-256 above
  normalizer         feature statistics of the fine-tuning run (null if unknown)
  config             the fine-tuning run's full config (context length, labels, decision)
  info               provenance: source run, step, the run the base came from

Fine-tuning from a pre-trained run (`config.train.fresh_adapters`, see `train.py`) uses
`with_fresh_adapters`: the run's adapters, if any, are merged into its base and new ones start
at `lora_B = 0`, so the first step computes exactly the pre-trained model's function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from himari_jax import config as config_lib
from himari_jax.data import features as features_lib
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.model import flag_trader as model_lib

FORMAT = 'himari-jax-adapters'
VERSION = 1
HEADER_KEY = '__header__'
LORA_LEAVES = ('lora_A', 'lora_B')


class AdapterError(ValueError):
  """An adapter file is unreadable or does not fit the base it is applied to."""


@dataclasses.dataclass(frozen=True)
class Adapters:
  """One adapter set and what is needed to run it on its base.

  Attributes:
    params: nested dict of the adapter leaves (host numpy arrays), the 'trainable' part of
      `model.param_labels(..., freeze_base=True)`.
    model_config: sizes and LoRA settings of the adapted model.
    base_fingerprint: `base_fingerprint` of the frozen base the adapters were trained on.
    normalizer: feature normaliser of the fine-tuning run, or None.
    config: the fine-tuning run's full config, or None.
    info: JSON-able provenance (source run, step, base run).
  """

  params: dict
  model_config: model_lib.ModelConfig
  base_fingerprint: str
  normalizer: features_lib.Normalizer | None = None
  config: ml_collections.ConfigDict | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _flat(params: Any) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(params)


def _split(params: Any) -> tuple[dict, dict]:
  """(adapter leaves, frozen base leaves) of `params`, flat dicts keyed by path tuples."""
  labels = _flat(model_lib.param_labels(params, freeze_base=True))
  flat = _flat(params)
  adapters = {k: v for k, v in flat.items() if labels[k] == 'trainable'}
  base = {k: v for k, v in flat.items() if labels[k] == 'frozen'}
  return adapters, base


def base_fingerprint(params: Any) -> str:
  """SHA-256 (hex) of the frozen base leaves of `params`: paths, dtypes, shapes and bytes.

  Leaves outside the base (adapters, LayerNorms, embeddings, head) do not enter, so every
  model fine-tuned on one base shares its fingerprint.
  """
  _, base = _split(params)
  digest = hashlib.sha256()
  for path in sorted(base):
    leaf = np.ascontiguousarray(np.asarray(base[path]))
    digest.update(f'{"/".join(path)}|{leaf.dtype.str}|{leaf.shape}|'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _expected_adapter_shapes(model_config: model_lib.ModelConfig) -> dict[tuple[str, ...], tuple]:
  adapters, _ = _split(model_lib.param_shapes(model_config))
  return {k: tuple(v.shape) for k, v in adapters.items()}


def _check_shapes(got: dict[tuple[str, ...], tuple], expected: dict[tuple[str, ...], tuple],
                  what: str) -> None:
  missing = sorted('/'.join(k) for k in set(expected) - set(got))
  extra = sorted('/'.join(k) for k in set(got) - set(expected))
  wrong = sorted(f'{"/".join(k)} {got[k]} != {expected[k]}'
                 for k in set(got) & set(expected) if tuple(got[k]) != tuple(expected[k]))
  if missing or extra or wrong:
    problems = [f'{name}: {", ".join(items[:4])}' for name, items in
                (('missing', missing), ('unexpected', extra), ('wrong shape', wrong)) if items]
    raise AdapterError(f'{what} do not match the model config ({"; ".join(problems)}).')


def extract_adapters(params: Any, model_config: model_lib.ModelConfig, *,
                     normalizer: features_lib.Normalizer | None = None,
                     config: ml_collections.ConfigDict | None = None,
                     info: dict[str, Any] | None = None) -> Adapters:
  """The adapter set of a model; its base's fingerprint ties the set to that base.

  From a full fine-tuning run (`freeze_base=False`) the set fits only that run's own base.
  """
  adapters, _ = _split(params)
  _check_shapes({k: np.shape(v) for k, v in adapters.items()},
                _expected_adapter_shapes(model_config), 'the adapter leaves of these params')
  host = {k: np.asarray(v) for k, v in adapters.items()}
  return Adapters(params=traverse_util.unflatten_dict(host), model_config=model_config,
                  base_fingerprint=base_fingerprint(params), normalizer=normalizer,
                  config=config, info=dict(info or {}))


def adapters_from_run(path: str | os.PathLike, which: str | int = 'best') -> Adapters:
  """The adapter set of a training run (workdir or its `checkpoints/` folder)."""
  loaded = checkpoint_lib.load_model(path, which)
  info = {'source': loaded.path, 'step': loaded.step,
          'base_from': loaded.config.train.init_from}
  return extract_adapters(loaded.params, loaded.model_config, normalizer=loaded.normalizer,
                          config=loaded.config, info=info)


def save_adapters(adapters: Adapters, path: str | os.PathLike) -> int:
  """Writes `adapters` to `path` (an `.npz`, replaced atomically); returns its size in bytes."""
  path = os.fspath(path)
  header = {
      'format': FORMAT, 'version': VERSION,
      'model_config': dataclasses.asdict(adapters.model_config),
      'base_fingerprint': adapters.base_fingerprint,
      'normalizer': adapters.normalizer.to_dict() if adapters.normalizer else None,
      'config': adapters.config.to_dict() if adapters.config is not None else None,
      'info': adapters.info,
  }
  arrays = {'/'.join(k): np.asarray(v) for k, v in _flat(adapters.params).items()}
  arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = path + '.partial'
  with open(partial, 'wb') as f:  # a file object: np.savez would otherwise append '.npz'
    np.savez(f, **arrays)
  os.replace(partial, path)
  return os.path.getsize(path)


def load_adapters(path: str | os.PathLike) -> Adapters:
  """Reads an adapter file written by `save_adapters`.

  Raises:
    AdapterError: the file is missing, not an adapter file, of another format version, or
      its leaves do not match the model config in its header.
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      stored = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise AdapterError(f'{path}: cannot read adapters ({type(e).__name__}: {e}).') from e
  if HEADER_KEY not in stored:
    raise AdapterError(f'{path}: no {HEADER_KEY} entry; not an adapter file written by '
                       'himari_jax.model.adapters.save_adapters.')
  header = json.loads(stored.pop(HEADER_KEY).tobytes().decode())
  flat = {tuple(k.split('/')): v for k, v in stored.items()}
  if header.get('format') != FORMAT or header.get('version') != VERSION:
    raise AdapterError(f'{path}: format {header.get("format")!r} version '
                       f'{header.get("version")!r}; expected {FORMAT!r} version {VERSION}.')
  model_config = model_lib.ModelConfig.from_config(header['model_config'])
  _check_shapes({k: v.shape for k, v in flat.items()}, _expected_adapter_shapes(model_config),
                f'{path}: the stored adapters')
  normalizer = header['normalizer']
  config = header['config']
  return Adapters(
      params=traverse_util.unflatten_dict(flat), model_config=model_config,
      base_fingerprint=header['base_fingerprint'],
      normalizer=features_lib.Normalizer.from_dict(normalizer) if normalizer else None,
      config=config_lib.upgrade_saved_config(config) if config is not None else None,
      info=header['info'])


def apply_adapters(base_params: Any, adapters: Adapters) -> dict:
  """Params of the adapted model: the frozen leaves of `base_params` plus `adapters`.

  `base_params` may be a pre-trained run's params (merged, without adapters) or any model on
  the same base; its own adapter leaves are ignored, so this also swaps one set for another.

  Raises:
    AdapterError: the base is not the one the adapters were trained on.
  """
  fingerprint = base_fingerprint(base_params)
  if fingerprint != adapters.base_fingerprint:
    source = adapters.info.get('source', 'these adapters')
    base_from = adapters.info.get('base_from')
    hint = f' (trained from {base_from})' if base_from else ''
    raise AdapterError(
        f'{source} were trained on base {adapters.base_fingerprint[:12]}{hint}, but the given '
        f'base weights are {fingerprint[:12]}; load the base the adapters were fine-tuned '
        'from (adapters.load_base_params of that run).')
  _, base = _split(base_params)
  return traverse_util.unflatten_dict({**_flat(adapters.params), **base})


def merge_adapters(base_params: Any,
                   adapters: Adapters) -> tuple[dict, model_lib.ModelConfig]:
  """`apply_adapters` folded into the base kernels: (params without LoRA, their config)."""
  return model_lib.merge_lora(apply_adapters(base_params, adapters), adapters.model_config)


def adapted_model(base_params: Any, adapters: Adapters) -> checkpoint_lib.LoadedModel:
  """A `LoadedModel` of base plus adapters, for `predict.predict_logits` (which merges).

  Raises:
    AdapterError: the adapters carry no config or normaliser (extracted without them).
  """
  if adapters.config is None or adapters.normalizer is None:
    raise AdapterError('these adapters carry no run config or normaliser; extract them with '
                       'adapters_from_run (or pass config= and normalizer=) to predict.')
  return checkpoint_lib.LoadedModel(
      config=adapters.config, model_config=adapters.model_config,
      params=apply_adapters(base_params, adapters), normalizer=adapters.normalizer,
      meta={'adapters': adapters.info}, step=int(adapters.info.get('step', 0)),
      path=str(adapters.info.get('source', '')))


def load_base_params(path: str | os.PathLike, which: str | int = 'best') -> dict:
  """Params of a training run with its adapters (if any) merged into the base kernels.

  The base leaves equal those of every run fine-tuned from `path` with `fresh_adapters`.
  """
  loaded = checkpoint_lib.load_model(path, which)
  merged, _ = model_lib.merge_lora(loaded.params, loaded.model_config)
  return merged


def with_fresh_adapters(params: Any, source_config: model_lib.ModelConfig,
                        target_config: model_lib.ModelConfig, rng: jax.Array) -> dict:
  """A pre-trained model prepared for LoRA fine-tuning, as host numpy arrays.

  The source's adapters (if any) are merged into its base kernels (in numpy, as
  `load_base_params` does, so the two bases agree bit for bit); new `lora_A` / `lora_B` for
  `target_config.lora_targets` are initialised as in `model.init_params` (`lora_B = 0`), so
  the result computes the source model's function. Every other leaf is the source's; the
  caller checks the tree against `target_config` (`initialization.initial_params` does).
  """
  host = jax.tree.map(np.asarray, params)
  merged, _ = model_lib.merge_lora(host, source_config)
  fresh = _flat(model_lib.init_params(target_config, rng))
  lora = {k: np.asarray(v) for k, v in fresh.items() if k[-1] in LORA_LEAVES}
  return traverse_util.unflatten_dict({**_flat(merged), **lora})
