"""The parameters a training run starts from: fresh, or those of `config.train.init_from`.

`init_from` names a training workdir, its checkpoints/ folder (the best step is read) or a
PyTorch `.pt` file (converted on load by convert.py); `config.train.fresh_adapters` starts
new LoRA adapters on its merged weights (adapters.py). Either way the params come back
replicated over the training mesh (mesh.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.sharding import NamedSharding

from himari_jax import config as config_lib
from himari_jax.data import features as features_lib
from himari_jax.model import adapters as adapters_lib
from himari_jax.model import checkpoint as checkpoint_lib
from himari_jax.model import flag_trader as model_lib
from himari_jax.training import mesh as mesh_lib


def initial_params(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig,
                   rng: jax.Array, sharding: NamedSharding) -> Any:
  """Fresh params (torch-style init), or those of `config.train.init_from`, replicated.

  The checkpoint must have been trained on `config.data.feature_set`; a `.pt` that records
  no set (an original seed file) is accepted, with a warning when the set is not a seed one.
  With `config.train.fresh_adapters` the checkpoint's adapters are merged into its base and
  new ones start at `lora_B = 0` (`adapters.with_fresh_adapters`): LoRA on a pre-trained base.
  """
  init_from = config.train.init_from
  if not init_from:
    init = functools.partial(model_lib.init_params, model_config,
                             context_length=config.train.context_length)
    return jax.jit(init, out_shardings=sharding)(rng)
  feature_set = features_lib.feature_set_of(config)
  if init_from.endswith('.pt'):
    from himari_jax.model import convert  # optional module (PyTorch conversion), imported on demand
    torch_checkpoint = convert.read_torch_checkpoint(init_from)
    source = model_lib.ModelConfig.from_config(torch_checkpoint.model_config)
    params, trained_with = torch_checkpoint.params, torch_checkpoint.feature_set
    if trained_with is None and features_lib.needs_normalization(feature_set):
      logging.warning("%s records no feature set; an original seed file was trained on the "
                      "seed's 22 inputs, so fine-tune it with --config.data.feature_set="
                      "seed_causal rather than '%s'", init_from, feature_set)
  else:
    loaded = checkpoint_lib.load_model(init_from)
    source, params, trained_with = loaded.model_config, loaded.params, loaded.feature_set
  if trained_with is not None and trained_with != feature_set:
    raise config_lib.ConfigError(
        f"config.train.init_from={init_from} was trained on feature set '{trained_with}' but "
        f"config.data.feature_set='{feature_set}'; set --config.data.feature_set="
        f'{trained_with} (its weights read those inputs).')
  if config.train.fresh_adapters:
    params = adapters_lib.with_fresh_adapters(params, source, model_config, rng)
  expected = jax.tree.map(lambda s: s.shape, model_lib.param_shapes(model_config))
  got = jax.tree.map(lambda x: tuple(np.shape(x)), params)
  if got != expected:
    flat_e, flat_g = traverse_util.flatten_dict(expected), traverse_util.flatten_dict(got)
    diff = sorted('/'.join(k) for k in set(flat_e) ^ set(flat_g)
                  | {k for k in set(flat_e) & set(flat_g) if flat_e[k] != flat_g[k]})
    raise config_lib.ConfigError(
        f'config.train.init_from={init_from}: its parameters do not match config.model '
        f'(differing: {", ".join(diff[:6])}); set the --config.model.* sizes to those of '
        'the checkpoint.')
  return mesh_lib.replicate(jax.tree.map(lambda x: np.asarray(x, np.float32), params), sharding)
