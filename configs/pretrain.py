"""Pre-training then LoRA (issue #8, part 3): `--config=configs/pretrain.py:<arm>[,tiny]`.

Arms (launch/pretrain_compare.py runs them all and compares them out of sample):

- `pretrain`: the whole transformer trained (`freeze_base=False`, no adapters) on BTC
  2017-2019, ETH 2017-2019 and ETH 2020-2024 with the usual label objective: a multi-asset,
  multi-era supervised base.
- `finetune`: LoRA on BTC 2020-2024 on the frozen pre-trained base; set
  `--config.train.init_from=<pretrain workdir>`. `fresh_adapters` starts new adapters
  (`lora_B = 0`) on the pre-trained weights.
- `full_finetune`: every weight trained on BTC 2020-2024 from the same pre-trained run.
- `scratch_lora`: the seed's recipe: LoRA on a randomly initialised, frozen base.

The three fine-tuning arms share one budget: the same data, model sizes, steps, batch,
optimiser and schedule; they differ only in the starting weights and which weights train.
Every arm is scored on the out-of-sample BTC 2025-2026 bars (`config.data.test`).

`,tiny` shrinks everything for tests (seconds on one CPU core).
"""

import importlib.util
import pathlib

import ml_collections

# Loaded by path: config_flags imports this file by path, so `configs` need not be importable.
_spec = importlib.util.spec_from_file_location(
    'himari_default_config', pathlib.Path(__file__).with_name('default.py'))
default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default)

PRETRAIN_DATA = 'btc_usdt_1h_2017_2019,eth_usdt_1h_2017_2019,eth_usdt_1h_2020_2024'
FINETUNE_DATA = 'btc_usdt_1h_2020_2024'
ARMS = ('pretrain', 'finetune', 'full_finetune', 'scratch_lora')


def _budget(config: ml_collections.ConfigDict) -> None:
  """Sizes and schedule shared by every arm (two CPU cores: minutes per run)."""
  config.model.update(d_model=64, num_layers=2, num_heads=4, dim_feedforward=256,
                      max_length=64, lora_rank=8)
  config.train.update(context_length=32, window_stride=8, batch_size=32, num_epochs=4,
                      steps_per_epoch=300, learning_rate=1e-3, warmup_steps=50,
                      class_weights='sqrt', log_every_steps=100, checkpoint_every_steps=0)


def _tiny(config: ml_collections.ConfigDict) -> None:
  config.data.max_bars = 1500
  config.model.update(d_model=16, num_layers=1, num_heads=2, dim_feedforward=32,
                      max_length=16, lora_rank=4)
  config.train.update(context_length=8, window_stride=4, batch_size=8, num_epochs=1,
                      steps_per_epoch=4, learning_rate=3e-3, warmup_steps=0,
                      eval_batch_size=256, log_every_steps=2)


def get_config(arg: str = 'pretrain') -> ml_collections.ConfigDict:
  """`arg` is an arm of `ARMS`, optionally followed by `,tiny`."""
  parts = [p.strip() for p in (arg or 'pretrain').split(',') if p.strip()]
  arm, switches = parts[0], set(parts[1:])
  if arm not in ARMS or switches - {'tiny'}:
    raise ValueError(f'unknown config argument {arg!r}; use one of {", ".join(ARMS)}, '
                     'optionally followed by ",tiny" (e.g. configs/pretrain.py:finetune,tiny)')
  config = default.get_config()
  config.train.keep_latest = 1  # runs of minutes: the best and the last step suffice
  # With init_from: merge the source's adapters into its base and start new ones at
  # lora_B = 0 (pre-trained base + fresh LoRA) instead of continuing the source's adapters.
  # Not in configs/default.py; train.py defaults it to False.
  config.train.fresh_adapters = arm != 'pretrain'
  _budget(config)

  pretrained = arm == 'pretrain'
  config.data.train = PRETRAIN_DATA if pretrained else FINETUNE_DATA
  # Pre-training and full fine-tuning train a plain transformer; LoRA arms add adapters.
  lora = arm in ('finetune', 'scratch_lora')
  config.model.lora_targets = 'q_proj,k_proj,v_proj,out_proj,ffn_1,ffn_2' if lora else ''
  config.model.freeze_base = lora
  if pretrained:
    config.train.num_epochs = 8  # three files: about twice the fine-tuning windows

  if 'tiny' in switches:
    _tiny(config)
  config.arm = arm
  return config
