"""PyTorch FLAG-TRADER checkpoints (`.pt`) <-> Flax params.

The Flax tree mirrors the PyTorch state dict (docs/ARCHITECTURE.md), so a key maps to a path by
renaming (`transformer_blocks.{i}` <-> `transformer_blocks_{i}`, `ffn.0` / `ffn.3` <-> `ffn_1` /
`ffn_2`, `lora.lora_A` <-> `lora_A`, LayerNorm `weight` <-> `scale`) and Linear weights are
transposed (`(out, in)` <-> `kernel (in, out)`). The expected keys and shapes are derived from the
Flax model itself, so every mismatch is caught and reported.

A `.pt` is read with `torch.load(weights_only=True)` only: tensors, containers, numbers and
strings (plus numpy scalars, which training scripts often store as metrics). Anything that would
need arbitrary code to unpickle is refused. torch is imported lazily (the optional `torch`
extra); nothing here needs it for Flax-only work.

Training runs: `convert_to_run` writes a `.pt` as step 0 of an Orbax run directory (the
layout of model/checkpoint.py: items `state` = {params} without optimiser state, and `meta`),
so `checkpoint.load_model`, `config.train.init_from` and every entry point read it like a run
trained here; `run_to_torch_checkpoint` goes back.

Inputs: an original seed `.pt` was trained on the seed's 22 raw features, not this project's
normalised state, so a converted run records the feature set it is scored with
(`config.data.feature_set` and `meta['feature_set']`): 'seed_causal' by default, 'seed_exact'
to reproduce the seed's own (look-ahead) numbers, see himari_jax/data/features.py. The seed sets use
the identity normaliser. Files exported from runs here carry their feature set and statistics;
an original file scored on 'himari' gets statistics fitted on the training split of
`config.data.train` (what training here would fit), and the run's meta says so.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from himari_jax import extras
from himari_jax.data import features as features_lib
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.model import flag_trader as model_lib

# `config` entries of the current layout (SPEC section 1); older files hold only
# state_dim, action_dim and max_length.
TORCH_CONFIG_KEYS = ('state_dim', 'action_dim', 'd_model', 'num_layers', 'num_heads',
                     'dim_feedforward', 'lora_rank')
# Top-level entry of files written by `save_torch_checkpoint`: the complete `config.model`
# (mask, alpha, adapter targets), which the original `config` has no room for.
HIMARI_MODEL_KEY = 'himari_jax_model'
# Top-level entry of exported files: the feature set the run was trained on.
FEATURE_SET_KEY = 'feature_set'
# What an original seed `.pt` (which records no feature set) is scored with by default: the
# seed's own columns, with trailing means where the seed's saw the future.
PT_DEFAULT_FEATURE_SET = 'seed_causal'
DEFAULT_NUM_HEADS = 8  # the original loader's default; head count leaves no trace in the weights
_MAX_LISTED = 12


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
  """Contents of a PyTorch FLAG-TRADER checkpoint in Flax form.

  model_config: a ConfigDict shaped like `configs/default.py`'s `config.model`.
  params: the `FlagTrader` parameter tree (float32 jax Arrays).
  metadata: the file's scalar entries (epoch, train_loss, val_loss, val_accuracy, ...).
  layout: 'model_state_dict', 'model' (older files) or 'state_dict' (a bare state dict).
  normalizer: the statistics of a file written by `save_torch_checkpoint` from a run here;
    None for the original files, which hold none.
  feature_set: the feature set the file records (exports from runs here; 'himari' for exports
    that predate feature sets, recognisable by their statistics); None for original files.
  """

  model_config: ml_collections.ConfigDict
  params: dict
  metadata: dict
  layout: str
  normalizer: features_lib.Normalizer | None = None
  feature_set: str | None = None


def _path_names(path: tuple) -> tuple[str, ...]:
  return tuple(getattr(k, 'key', getattr(k, 'name', str(k))) for k in path)


def torch_key(names: tuple[str, ...]) -> tuple[str, bool]:
  """Flax param path -> (PyTorch state-dict key, whether the array is transposed).

  ('transformer_blocks_0', 'ffn_1', 'base', 'kernel') -> ('transformer_blocks.0.ffn.0.base.weight',
  True).
  """
  parts = []
  for name in names[:-1]:
    if match := re.fullmatch(r'transformer_blocks_(\d+)', name):
      parts += ['transformer_blocks', match.group(1)]
    else:
      parts.append({'ffn_1': 'ffn.0', 'ffn_2': 'ffn.3'}.get(name, name))
  leaf = names[-1]
  if leaf in ('lora_A', 'lora_B'):
    parts += ['lora', leaf]
  else:
    parts.append({'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf))
  return '.'.join(parts), leaf == 'kernel'


def _expected_keys(model_config: model_lib.ModelConfig) -> dict[str, tuple[tuple, tuple, bool]]:
  """State-dict key -> (Flax path, PyTorch shape, transposed) for a model of these sizes."""
  expected = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(model_lib.param_shapes(model_config))[0]:
    names = _path_names(path)
    key, transposed = torch_key(names)
    shape = tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape)
    expected[key] = (names, shape, transposed)
  return expected


def _listing(title: str, items: list[str]) -> str:
  shown = ', '.join(items[:_MAX_LISTED])
  more = f', ... and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
  return f'\n  {title} ({len(items)}): {shown}{more}'


def _describe(model_config: model_lib.ModelConfig) -> str:
  return (f'd_model={model_config.d_model}, num_layers={model_config.num_layers}, '
          f'dim_feedforward={model_config.dim_feedforward}, lora_rank={model_config.lora_rank}, '
          f'max_length={model_config.max_length}, state_dim={model_config.state_dim}, '
          f'action_dim={model_config.action_dim}')


def torch_state_dict_to_flax(state_dict: Mapping[str, Any],
                             model_config: model_lib.ModelConfig) -> dict:
  """PyTorch state dict (tensors or arrays) -> `FlagTrader` params (float32 jax Arrays).

  Raises ConversionError listing every missing, unexpected and wrongly-shaped key, or
  naming a weight with NaN or inf values.
  """
  expected = _expected_keys(model_config)
  shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
  missing = [key for key in expected if key not in shapes]
  unexpected = [key for key in shapes if key not in expected]
  wrong = [f'{key} {shapes[key]} (expected {expected[key][1]})'
           for key in expected if key in shapes and shapes[key] != expected[key][1]]
  if missing or unexpected or wrong:
    raise ConversionError(
        f'the state dict does not match a FLAG-TRADER with {_describe(model_config)}:'
        + (_listing('missing keys', missing) if missing else '')
        + (_listing('unexpected keys', unexpected) if unexpected else '')
        + (_listing('wrong shapes', wrong) if wrong else ''))
  params: dict = {}
  for key, (names, _, transposed) in expected.items():
    array = _as_numpy(key, state_dict[key])
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
      raise ConversionError(f'state-dict entry {key} has {bad} NaN or inf values; the file is '
                            'damaged or its training diverged, so it is not converted.')
    array = array.T if transposed else array
    node = params
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = jnp.asarray(np.ascontiguousarray(array))
  return params


def flax_to_torch_state_dict(params: Any) -> dict[str, np.ndarray]:
  """`FlagTrader` params -> {PyTorch state-dict key: float32 array in PyTorch layout}."""
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key, transposed = torch_key(_path_names(path))
    array = np.asarray(leaf, np.float32)
    state[key] = np.array(array.T if transposed else array, order='C')  # a writable copy
  return state


def _as_numpy(key: str, value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor; bfloat16 / float16 go through float32
    if not value.is_floating_point():
      raise ConversionError(f'state-dict entry {key} has dtype {value.dtype}; expected floats.')
    return value.detach().cpu().float().numpy()
  array = np.asarray(value)
  if not np.issubdtype(array.dtype, np.floating):
    raise ConversionError(f'state-dict entry {key} has dtype {array.dtype}; expected floats.')
  return array.astype(np.float32)


def _inferred_sizes(state_dict: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, str]]:
  """Sizes the original loader read off the weights: ({field: value}, {field: absent key})."""
  shape = {key: tuple(value.shape) for key, value in state_dict.items()}
  sources = {
      'd_model': ('action_head.weight', 1),
      'action_dim': ('action_head.weight', 0),
      'state_dim': ('state_embedding.weight', 1),
      'max_length': ('pos_embedding', 1),
      'dim_feedforward': ('transformer_blocks.0.ffn.0.base.weight', 0),
  }
  sizes, absent = {}, {}
  for field, (key, axis) in sources.items():
    if key in shape and len(shape[key]) > axis:
      sizes[field] = shape[key][axis]
    else:
      absent[field] = key
  lora_a = sorted(key for key in shape if key.endswith('.lora.lora_A'))
  if lora_a and len(shape[lora_a[0]]) == 2:
    sizes['lora_rank'] = shape[lora_a[0]][1]
  else:
    absent['lora_rank'] = 'any *.lora.lora_A'
  block_key = re.compile(r'transformer_blocks\.(\d+)\.')
  blocks = [int(m.group(1)) for key in shape if (m := block_key.match(key))]
  if blocks:
    sizes['num_layers'] = max(blocks) + 1
  else:
    absent['num_layers'] = 'any transformer_blocks.{i}.*'
  return sizes, absent


def infer_model_config(state_dict: Mapping[str, Any],
                       torch_config: Mapping[str, Any] | None = None) -> model_lib.ModelConfig:
  """The `ModelConfig` of a PyTorch checkpoint: its `config` where given, else inferred.

  Inference follows the original loader (SPEC section 1): d from action_head.weight, layers from
  the largest block index, rank from lora_A, max_length from pos_embedding, dim_feedforward from
  ffn.0.base.weight; heads default to 8. The original applies no attention mask, so `causal` is
  False unless the file was written by `save_torch_checkpoint` with a causal model.
  """
  torch_config = dict(torch_config or {})
  sizes, absent = _inferred_sizes(state_dict)
  if HIMARI_MODEL_KEY in torch_config:
    values = dict(torch_config[HIMARI_MODEL_KEY])
  else:
    values = {'causal': False, 'num_heads': DEFAULT_NUM_HEADS}
    for field in (*TORCH_CONFIG_KEYS, 'max_length', 'lora_alpha'):
      if field in torch_config:
        values[field] = torch_config[field]
    if 'dropout' in torch_config:
      values['dropout_rate'] = torch_config['dropout']
  # The table length is never in the current layout's config; the weights are the truth.
  if 'max_length' in sizes:
    values['max_length'] = sizes['max_length']
  unknown = [field for field in absent if field not in values]
  if unknown:
    raise ConversionError(
        'this is not a FLAG-TRADER state dict: cannot infer '
        + ', '.join(f'model.{field} (needs {absent[field]})' for field in unknown)
        + _listing('keys found', sorted(state_dict)))
  for field, size in sizes.items():
    values.setdefault(field, size)
  try:
    for field in ('state_dim', 'action_dim', 'd_model', 'num_layers', 'num_heads',
                  'dim_feedforward', 'lora_rank', 'max_length'):
      values[field] = int(values[field])
    for field in ('lora_alpha', 'dropout_rate'):
      if field in values:
        values[field] = float(values[field])
    return model_lib.ModelConfig.from_config(values)
  except (TypeError, ValueError) as e:
    raise ConversionError(f'invalid model config in the checkpoint: {e}') from e


def model_config_dict(model_config: model_lib.ModelConfig) -> ml_collections.ConfigDict:
  """A `ModelConfig` as a ConfigDict shaped like `configs/default.py`'s `config.model`."""
  values = dataclasses.asdict(model_config)
  values['lora_targets'] = ','.join(model_config.lora_targets)
  return ml_collections.ConfigDict(values)


def _torch(doing: str, path: str | os.PathLike) -> Any:
  """The torch module, or `extras.MissingExtraError` naming the `.pt` file and the extra."""
  return extras.import_extra('torch', 'torch', f'{doing} the PyTorch file {os.fspath(path)}')


def _numpy_scalar_globals() -> list:
  """Allowlist for numpy scalars in metadata; reconstructing them runs no user code."""
  scalar = np._core.multiarray.scalar
  dtypes = [getattr(np.dtypes, f'{kind}DType') for kind in
            ('Float64', 'Float32', 'Float16', 'Int64', 'Int32', 'UInt8', 'Bool')]
  return [np.dtype, scalar, (scalar, 'numpy.core.multiarray.scalar'), *dtypes]


def _read_pt(path: str) -> Any:
  torch = _torch('reading', path)
  if not os.path.isfile(path):
    raise ConversionError(f'{path}: no such file.')
  try:
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    reason = str(e).strip().splitlines()
    detail = next((line.strip() for line in reversed(reason)
                   if 'GLOBAL' in line or 'Unsupported' in line), reason[-1] if reason else '')
    raise ConversionError(
        f'{path} was refused for security: it holds Python objects that only arbitrary code '
        f'can rebuild ({detail}). A .pt file is a pickle and can run any code when loaded, so '
        'only tensors, containers, numbers and strings are accepted (torch.load with '
        'weights_only=True). If you trust its origin, re-save it in a trusted environment as '
        'torch.save({"model_state_dict": model.state_dict(), "config": dict(config)}, path).'
    ) from e
  except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
    raise ConversionError(
        f'{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else "unexpected end of file"}); the file may be '
        'truncated or corrupted: copy it again.') from e


def _is_state_dict(tree: Any) -> bool:
  return isinstance(tree, Mapping) and bool(tree) and all(
      isinstance(k, str) and hasattr(v, 'shape') for k, v in tree.items())


def _split_layout(path: str, checkpoint: Any) -> tuple[str, Mapping, Mapping]:
  """-> (layout, state dict, torch config) of a loaded `.pt`."""
  for layout in ('model_state_dict', 'model'):
    if isinstance(checkpoint, Mapping) and _is_state_dict(checkpoint.get(layout)):
      torch_config = checkpoint.get('config') or {}
      if not isinstance(torch_config, Mapping):
        raise ConversionError(f'{path}: `config` is a {type(torch_config).__name__}, '
                              'expected a dict.')
      if HIMARI_MODEL_KEY in checkpoint:
        torch_config = {**torch_config, HIMARI_MODEL_KEY: checkpoint[HIMARI_MODEL_KEY]}
      return layout, checkpoint[layout], torch_config
  if _is_state_dict(checkpoint):
    return 'state_dict', checkpoint, {}
  found = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else []
  raise ConversionError(
      f'{path} is not a FLAG-TRADER checkpoint: expected a dict with a `model_state_dict` '
      f'(older files: `model`) state dict and a `config`, or a bare state dict; found a '
      f'{type(checkpoint).__name__}' + (_listing('with keys', found) if found else '.'))


def _scalar_metadata(checkpoint: Any) -> dict:
  if not isinstance(checkpoint, Mapping):
    return {}
  metadata = {}
  for key, value in checkpoint.items():
    if isinstance(value, np.generic):
      value = value.item()
    if isinstance(value, bool | int | float | str) and key != FEATURE_SET_KEY:
      metadata[str(key)] = value
  return metadata


def _normalizer_entry(path: str, checkpoint: Any) -> features_lib.Normalizer | None:
  entry = checkpoint.get('normalizer') if isinstance(checkpoint, Mapping) else None
  if entry is None:
    return None
  try:
    return features_lib.Normalizer.from_dict(
        {k: v if k == 'clip' else _as_numpy(k, v) for k, v in entry.items()})
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise ConversionError(f'{path}: unreadable `normalizer` entry ({e}); expected '
                          '{"mean": (60,), "std": (60,), "clip": float or None} as '
                          'save_torch_checkpoint writes.') from e


def _feature_set_entry(path: str, checkpoint: Any,
                       normalizer: features_lib.Normalizer | None) -> str | None:
  entry = checkpoint.get(FEATURE_SET_KEY) if isinstance(checkpoint, Mapping) else None
  if entry is None:
    # Statistics without a feature set: exported from a run here before feature sets existed.
    return None if normalizer is None else features_lib.DEFAULT_FEATURE_SET
  try:
    return features_lib.get_feature_set(entry).name
  except (features_lib.FeatureSetError, TypeError) as e:
    raise ConversionError(f'{path}: `{FEATURE_SET_KEY}` entry {entry!r} is not a feature set; '
                          f'valid: {", ".join(features_lib.FEATURE_SETS)}.') from e


def read_torch_checkpoint(path: str | os.PathLike) -> TorchCheckpoint:
  """Reads a PyTorch FLAG-TRADER `.pt` (either layout) into Flax form; see TorchCheckpoint."""
  path = os.fspath(path)
  checkpoint = _read_pt(path)
  layout, state_dict, torch_config = _split_layout(path, checkpoint)
  try:
    model_config = infer_model_config(state_dict, torch_config)
    params = torch_state_dict_to_flax(state_dict, model_config)
  except ConversionError as e:
    raise ConversionError(f'{path}: {e}') from e
  normalizer = _normalizer_entry(path, checkpoint)
  return TorchCheckpoint(model_config_dict(model_config), params, _scalar_metadata(checkpoint),
                         layout, normalizer, _feature_set_entry(path, checkpoint, normalizer))


def load_torch_checkpoint(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, dict]:
  """Reads `flag_trader_best.pt` -> (model config, params).

  config: a ConfigDict shaped like `configs/default.py`'s `config.model` (feed it to
  `ModelConfig.from_config`); params: exactly the `FlagTrader` parameter tree. Both layouts load:
  `model_state_dict` + full config, and older `model` + partial config (sizes inferred as the
  original loader did). Raises ConversionError for unreadable, unsafe or mismatched files.
  """
  loaded = read_torch_checkpoint(path)
  return loaded.model_config, loaded.params


def _check_plain(name: str, value: Any) -> None:
  """Rejects entries that `torch.load(weights_only=True)` could not read back."""
  if isinstance(value, Mapping):
    for key, item in value.items():
      _check_plain(f'{name}.{key}', item)
  elif isinstance(value, list | tuple):
    for i, item in enumerate(value):
      _check_plain(f'{name}[{i}]', item)
  elif not isinstance(value, bool | int | float | str | np.ndarray | jax.Array | None):
    raise ValueError(f'extra entry {name} is a {type(value).__name__}; only numbers, strings, '
                     'arrays and lists / dicts of them can be read back safely.')


def _torch_value(torch, value: Any) -> Any:
  if isinstance(value, Mapping):
    return {key: _torch_value(torch, item) for key, item in value.items()}
  if isinstance(value, list | tuple):
    return type(value)(_torch_value(torch, item) for item in value)
  if isinstance(value, np.ndarray | jax.Array):
    return torch.from_numpy(np.array(value))
  return value


def save_torch_checkpoint(path: str | os.PathLike, params: Any,
                          model_config: model_lib.ModelConfig | Mapping[str, Any],
                          **extra: Any) -> None:
  """Writes Flax `params` as a PyTorch `.pt` in the original layout.

  The file holds `model_state_dict` (SPEC key names and shapes), `config` (the SPEC fields),
  the full `config.model` under `himari_jax_model` (so the mask choice survives a round trip),
  and `extra` entries (e.g. epoch=3, val_loss=0.71), which must be plain numbers, strings,
  containers or arrays. The file is written atomically: on error nothing is left at `path`.
  """
  torch = _torch('writing', path)
  if not isinstance(model_config, model_lib.ModelConfig):
    model_config = model_lib.ModelConfig.from_config(model_config)
  reserved = {'model_state_dict', 'config', HIMARI_MODEL_KEY} & set(extra)
  if reserved:
    raise ValueError(f'extra entries may not be named {sorted(reserved)}.')
  for key, value in extra.items():
    _check_plain(key, value)
  state = flax_to_torch_state_dict(params)
  expected = _expected_keys(model_config)
  wrong = [key for key in expected if key not in state or state[key].shape != expected[key][1]]
  if wrong or len(state) != len(expected):
    raise ConversionError(f'params do not match the model config ({_describe(model_config)}); '
                          f'check {", ".join(wrong[:_MAX_LISTED]) or "the extra keys"}.')
  full = model_config_dict(model_config).to_dict()
  checkpoint = {
      'model_state_dict': {key: torch.from_numpy(value) for key, value in state.items()},
      'config': {field: full[field] for field in TORCH_CONFIG_KEYS},
      HIMARI_MODEL_KEY: full,
      **{key: _torch_value(torch, value) for key, value in extra.items()},
  }
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.pt', dir=directory)
  try:
    with os.fdopen(fd, 'wb') as f:
      torch.save(checkpoint, f)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def converted_config(base: ml_collections.ConfigDict, loaded: TorchCheckpoint,
                     feature_set: str = PT_DEFAULT_FEATURE_SET) -> ml_collections.ConfigDict:
  """`base` (a full config) with `.model` from the checkpoint, as the original was trained.

  The original scores one bar at a time (T = 1) without a mask; `data.feature_set` is the set
  the run is scored with; `init_from` is cleared so the run does not point back at the file it
  came from.
  """
  config = ml_collections.ConfigDict(base.to_dict())
  config.model.update(loaded.model_config.to_dict())
  config.data.feature_set = feature_set
  config.train.context_length = 1
  config.train.init_from = ''
  return config


def _resolve_feature_set(path: str, loaded: TorchCheckpoint, requested: str | None) -> str:
  """The requested set, else the file's, else PT_DEFAULT_FEATURE_SET; a file that records a
  set (an export of a run here) is refused any other."""
  if requested is not None:
    features_lib.get_feature_set(requested)
  if loaded.feature_set is None:
    return requested or PT_DEFAULT_FEATURE_SET
  try:
    features_lib.check_feature_set(loaded.feature_set, requested or loaded.feature_set)
  except features_lib.FeatureSetError as e:
    raise ConversionError(f'{path} records its feature set: {e}') from e
  return loaded.feature_set


def load_pt_model(pt_path: str | os.PathLike, base_config: ml_collections.ConfigDict,
                  feature_set: str | None = None,
                  normalizer: features_lib.Normalizer | None = None
                  ) -> checkpoint_lib.LoadedModel:
  """A PyTorch `.pt` as a model ready to predict, with the inputs its weights know.

  Args:
    pt_path: an original seed file or an export of a run here (`run_to_torch_checkpoint`).
    base_config: the full config to record (`converted_config` puts the checkpoint's model,
      T = 1 and the feature set in it).
    feature_set: what to score with; None = the set the file records, else 'seed_causal'.
      'seed_exact' reproduces the seed's own numbers and sees the future.
    normalizer: statistics for a 'himari' model; by default those stored in the file, else
      fitted on the training split of `base_config.data.train`. The seed sets are fed raw:
      their normaliser is the identity and any other is refused.

  Returns:
    A `checkpoint.LoadedModel` (step 0, path = the file) whose meta holds `feature_set`,
    `normalizer_source`, `source` (path, layout, the file's scalar metadata), `param_counts`
    and, for a look-ahead set, `lookahead_warning`.

  Raises:
    ConversionError: unreadable file, unknown feature set, a set other than the file's, or
      statistics that the feature set cannot use.
  """
  path = os.fspath(pt_path)
  loaded = read_torch_checkpoint(path)
  try:
    feature_set = _resolve_feature_set(path, loaded, feature_set)
  except features_lib.FeatureSetError as e:
    raise ConversionError(str(e)) from e
  config = converted_config(base_config, loaded, feature_set)
  model_config = model_lib.ModelConfig.from_config(config.model)  # fails here, not at a load
  if not features_lib.needs_normalization(feature_set):
    for candidate, where in ((normalizer, 'given'), (loaded.normalizer, f'stored in {path}')):
      if candidate is not None and not candidate.is_identity:
        raise ConversionError(
            f"feature set '{feature_set}' is fed raw, as the seed was trained; the statistics "
            f'{where} would rescale it. Drop them, or score with feature_set=himari.')
    normalizer = features_lib.Normalizer.identity()
    source = f"identity: feature set '{feature_set}' is not normalised"
  elif normalizer is not None:
    source = 'given to the converter'
  elif loaded.normalizer is not None:
    normalizer, source = loaded.normalizer, f'stored in {path}'
  else:
    from himari_jax.data import input_pipeline  # heavy: only when statistics must be fitted

    normalizer = input_pipeline.prepare_data(config).normalizer
    source = (f'fitted by the converter on the training split of {config.data.train} '
              '(the .pt holds no normalisation statistics)')
  meta = {'config': config.to_dict(), 'normalizer': normalizer.to_dict(),
          'normalizer_source': source, 'feature_set': feature_set,
          'source': {'path': os.path.abspath(path), 'layout': loaded.layout,
                     'metadata': loaded.metadata},
          'param_counts': model_lib.count_params(loaded.params)}
  if warning := features_lib.lookahead_warning(feature_set):
    meta['lookahead_warning'] = warning
  return checkpoint_lib.LoadedModel(config=config, model_config=model_config,
                                    params=loaded.params, normalizer=normalizer, meta=meta,
                                    step=0, path=path)


def convert_to_run(pt_path: str | os.PathLike, workdir: str | os.PathLike,
                   base_config: ml_collections.ConfigDict,
                   normalizer: features_lib.Normalizer | None = None,
                   feature_set: str | None = None) -> str:
  """Converts a PyTorch `.pt` into a run directory that `checkpoint.load_model` reads.

  Writes `<workdir>/checkpoints/0/` with the Orbax items of himari_jax/model/checkpoint.py: `state`
  = {'params'} (a converted file has no optimiser state; load_model and
  `config.train.init_from` read params only) and `meta` as `load_pt_model` builds it (config
  with `data.feature_set`, normalizer, normalizer_source, feature_set, source, ...); the
  arguments are those of `load_pt_model`. Everything is checked before anything is written,
  and the run appears atomically: on any error `workdir` is not created. An existing
  non-empty `workdir` is refused.

  Returns the step directory written.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise ConversionError(f'{workdir} already exists and is not empty; choose a new --output.')
  loaded = load_pt_model(pt_path, base_config, feature_set, normalizer)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(workdir)}.tmp-', dir=parent)
  try:
    manager = checkpoint_lib.make_manager(
        os.path.join(staging, checkpoint_lib.CHECKPOINT_SUBDIR),
        best_metric=loaded.config.train.best_metric)
    checkpoint_lib.save(manager, 0, {'params': loaded.params}, loaded.meta)
    checkpoint_lib.finish_saves(manager)
    manager.close()
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty, checked above
    os.rename(staging, workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return os.path.join(workdir, checkpoint_lib.CHECKPOINT_SUBDIR, '0')


def run_to_torch_checkpoint(run: str | os.PathLike, pt_path: str | os.PathLike,
                            which: str | int = 'best') -> checkpoint_lib.LoadedModel:
  """Exports a run's `which` checkpoint (see `checkpoint.load_model`) as a PyTorch `.pt`.

  Besides the model, the file holds the run's step, its normaliser (`normalizer`: {'mean',
  'std'}, read back by `convert_to_run`) and the epoch's metrics under the original names
  (epoch, train_loss, val_loss, val_accuracy), and its feature set (`feature_set`), so the
  file converts back to a run scored on the same inputs. Returns the exported run.
  """
  loaded = checkpoint_lib.load_model(run, which)
  metrics = loaded.meta.get('epoch_metrics') or {}
  extra = {key: metrics[key] for key in ('epoch', 'train_loss', 'val_loss', 'val_accuracy')
           if isinstance(metrics.get(key), int | float)}
  normalizer = {'mean': loaded.normalizer.mean, 'std': loaded.normalizer.std,
                'clip': loaded.normalizer.clip}
  save_torch_checkpoint(pt_path, loaded.params, loaded.model_config, step=loaded.step,
                        normalizer=normalizer,
                        **{FEATURE_SET_KEY: features_lib.feature_set_of(loaded.config)}, **extra)
  return loaded
