"""Why does a model trade the way it does? Predicted actions against labels, per checkpoint.

  python launch/diagnose.py --checkpoints=checkpoints/small_a,checkpoints/small_b \
      --dataset=btc_usdt_1h_2025_2026 --output=runs/diagnose.json

For each checkpoint: predicted-action distribution vs label distribution, confusion matrix,
per-class precision / recall, mean logits per true class, and a collapse flag.
"""

import json
import os

from absl import flags, logging

from himari_jax import cli, constants
from himari_jax.data import input_pipeline, labels
from himari_jax.data import ohlcv as data
from himari_jax.inference import members as members_lib
from himari_jax.inference import predict
from himari_jax.model import checkpoint
from himari_jax.stats import diagnostics

_CHECKPOINTS = flags.DEFINE_list('checkpoints', None, 'Training workdirs or .pt files.',
                                 required=True)
_DATASET = flags.DEFINE_string('dataset', 'btc_usdt_1h_2025_2026', 'Builtin name or CSV path.')
_WHICH = flags.DEFINE_string('which', 'best', "Checkpoint of each run: 'best' or 'latest'.")
_BIAS = flags.DEFINE_list('logit_bias', ['0', '0', '0'], 'Added to logits before argmax.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the diagnostics as JSON here.')


def main(argv):
  del argv
  checkpoint.quiet_orbax_logging()
  bias = [float(b) for b in _BIAS.value]
  if len(bias) != 3:
    raise ValueError(f'--logit_bias needs 3 numbers (SELL,HOLD,BUY), got {_BIAS.value}')
  df = data.load_dataset(_DATASET.value, fill_gaps=True)
  members = [members_lib.load_member(path, _WHICH.value) for path in _CHECKPOINTS.value]
  report = {'dataset': _DATASET.value, 'bars': len(df), 'logit_bias': bias, 'models': {}}
  for path, loaded in zip(_CHECKPOINTS.value, members, strict=True):
    preds = predict.predict_logits(loaded, df)
    y, valid = labels.make_labels(df, loaded.config.labels.kind,
                                  **input_pipeline.label_params(loaded.config.labels))
    result = diagnostics.diagnostics(preds.logits + bias, y, valid & preds.available,
                                     collapse_threshold=loaded.config.train.collapse_threshold)
    report['models'][path] = result
    print(f'\n== {path} (step {loaded.step}) on {_DATASET.value}: {result["bars"]} scored bars')
    print(f'{"":>6} {"label %":>8} {"pred %":>8} {"precision":>10} {"recall":>8}   mean logits')
    for action in constants.ACTION_NAMES:
      precision, recall = result['precision'][action], result['recall'][action]
      print(f'{action:>6} {100 * result["label_share"][action]:8.1f} '
            f'{100 * result["predicted_share"][action]:8.1f} '
            f'{"-" if precision is None else f"{precision:.3f}":>10} '
            f'{"-" if recall is None else f"{recall:.3f}":>8}   '
            f'{result["mean_logits_by_label"][action]}')
    print(f'confusion (rows = labels S/H/B, columns = predictions): {result["confusion"]}')
    print(f'accuracy {result["accuracy"]:.3f}')
    if result['collapsed']:
      logging.warning('COLLAPSE: %s predicts %s on %.0f%% of bars', path, result['collapsed_to'],
                      100 * result['predicted_share'][result['collapsed_to']])
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, 'w') as f:
      json.dump(report, f, indent=2)
    print(f'\nwrote {_OUTPUT.value}')


if __name__ == '__main__':
  cli.run(main)
