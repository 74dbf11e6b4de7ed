"""Converts a PyTorch FLAG-TRADER checkpoint into a run directory, or a run back into a `.pt`.

  python launch/convert_checkpoint.py --input=flag_trader_best.pt --output=runs/seed_pt
  python launch/convert_checkpoint.py --reverse --input=runs/small --output=small.pt

The run directory is read by every entry point like one trained here (`checkpoint.load_model`,
`--config.train.init_from=runs/seed_pt` to fine-tune). Its config is `--config` (default: the
seed variant, whose logit bias belongs to the seed model) with the checkpoint's model sizes,
context length 1 and no attention mask, as the original was trained.

Inputs: the run records the feature set it is scored with. `--feature_set` defaults to the
set the file records, else 'seed_causal' (the seed's 22 raw columns with trailing means);
`--feature_set=seed_exact` reproduces the seed's own numbers, whose inputs see the future.

Normalisation (with --feature_set=himari; the seed sets are fed raw): the original `.pt` files
hold no statistics. `--normalizer=stats.json` ({"mean": [60 floats], "std": [60 floats]})
gives them; otherwise they are fitted on the training split of `config.data.train`, as
training here would, and the run's meta records which. Nothing is written when the input
cannot be converted.
"""

import json
import os

from absl import app, flags, logging

from himari_jax import cli
from himari_jax.data import features
from himari_jax.model import checkpoint, convert

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_INPUT = flags.DEFINE_string('input', None, 'flag_trader_best.pt, or a run with --reverse.',
                             required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'New run directory, or a .pt with --reverse.',
                              required=True)
_REVERSE = flags.DEFINE_bool('reverse', False, 'Export a run (Flax) as a PyTorch .pt.')
_WHICH = flags.DEFINE_string('which', 'best', "With --reverse: 'best', 'latest' or a step.")
_NORMALIZER = flags.DEFINE_string('normalizer', None,
                                  'JSON file with the feature statistics {"mean", "std"}.')
_FEATURE_SET = flags.DEFINE_enum(
    'feature_set', None, list(features.FEATURE_SETS),
    "Inputs the converted run is scored with; default: the file's own, else 'seed_causal'.")
cli.define_config_file(
    'config', os.path.join(_REPO, 'configs', 'flag_trader.py') + ':seed',
    'Config recorded with the converted run (its .model is replaced by the checkpoint\'s).')


def _read_normalizer(path: str) -> features.Normalizer:
  with open(path) as f:
    return features.Normalizer.from_dict(json.load(f))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  checkpoint.quiet_orbax_logging()
  if _REVERSE.value:
    which = int(_WHICH.value) if _WHICH.value.isdigit() else _WHICH.value
    loaded = convert.run_to_torch_checkpoint(_INPUT.value, _OUTPUT.value, which)
    logging.info('wrote %s from %s', _OUTPUT.value, loaded.path)
    return
  normalizer = _read_normalizer(_NORMALIZER.value) if _NORMALIZER.value else None
  step_dir = convert.convert_to_run(_INPUT.value, _OUTPUT.value, flags.FLAGS.config,
                                    normalizer, _FEATURE_SET.value)
  loaded = checkpoint.load_model(_OUTPUT.value)
  logging.info('wrote %s: %s; feature set %s; normaliser %s', step_dir, loaded.model_config,
               loaded.meta['feature_set'], loaded.meta['normalizer_source'])
  if 'lookahead_warning' in loaded.meta:
    logging.warning(loaded.meta['lookahead_warning'])


if __name__ == '__main__':
  cli.run(main)
