"""Pre-training then LoRA: `--config=configs/pretrain.py:<arm>[,tiny]`; arms and budget in
`himari_jax.config.pretrain_config` (launch/pretrain_compare.py runs them all and compares
them out of sample).
"""

import ml_collections

from himari_jax import config as config_lib


def get_config(arg: str = 'pretrain') -> ml_collections.ConfigDict:
  return config_lib.pretrain_config(arg)
