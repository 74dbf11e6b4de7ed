"""Placebo runs of a pipeline: `--config=configs/placebo.py:<variant>` for launch/placebo.py,
with variant `quickstart` (default) or `tiny`; defined in `himari_jax.config.placebo_config`.

Any field can be overridden, e.g. `--config.train.train.steps_per_epoch=100` or
`--config.placebo.method=block`.
"""

import ml_collections

from himari_jax import config as config_lib


def get_config(variant: str = 'quickstart') -> ml_collections.ConfigDict:
  return config_lib.placebo_config(variant)
