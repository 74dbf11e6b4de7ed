"""Base configuration shared by every FLAG-TRADER variant.

Variants (configs/flag_trader.py) override fields of this one instead of copying it.
Any field can be overridden on the command line, e.g. `--config.train.batch_size=32`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.train = 'btc_usdt_1h_2020_2024'  # builtin name or CSV path; comma-separated list
  config.data.test = 'btc_usdt_1h_2025_2026'  # out-of-sample era for backtests
  config.data.val_fraction = 0.15  # last share of the training bars held out for validation
  config.data.embargo = -1  # bars dropped between splits; -1 = the label horizon
  config.data.fill_gaps = True  # forward-fill missing hours with zero-volume bars
  config.data.max_bars = 0  # keep only the last N bars of each training file (0 = all)

  config.labels = ml_collections.ConfigDict()
  config.labels.kind = 'threshold'  # 'threshold' or 'sharpe' (SPEC section 4)
  config.labels.horizon = 6  # bars ahead for the threshold rule
  config.labels.threshold = 0.01  # |return| that makes a BUY / SELL

  config.model = ml_collections.ConfigDict()
  config.model.state_dim = 60
  config.model.action_dim = 3
  config.model.d_model = 768
  config.model.num_layers = 12
  config.model.num_heads = 8
  config.model.dim_feedforward = 3072
  config.model.max_length = 256  # rows of the positional table
  config.model.dropout_rate = 0.1
  config.model.lora_rank = 16
  config.model.lora_alpha = 16.0
  config.model.lora_targets = 'q_proj,k_proj,v_proj,out_proj,ffn_1,ffn_2'  # with adapters
  config.model.freeze_base = True  # False trains every weight (pre-training, full fine-tuning)
  config.model.causal = True  # causal attention mask; False reproduces the original (no mask)
  config.model.dtype = 'float32'  # compute dtype; 'bfloat16' on GPUs

  config.train = ml_collections.ConfigDict()
  config.train.context_length = 1  # T: bars the transformer sees per window (seed: 1)
  config.train.window_stride = 1  # bars between consecutive training windows
  config.train.batch_size = 64  # global batch, split across all devices
  config.train.num_epochs = 10
  config.train.steps_per_epoch = 0  # 0 = one full pass over the training windows
  config.train.learning_rate = 1e-4
  config.train.warmup_steps = 0
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0
  config.train.class_weights = 'fixed'  # 'fixed', 'inverse', 'sqrt' or 'none'
  config.train.best_metric = 'val_loss'  # checkpoint kept as "best"; '-val_accuracy' style for max
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500  # also checkpoint mid-epoch (pre-emption); 0 = off
  config.train.keep_latest = 2  # latest checkpoints kept besides the best one
  config.train.eval_batch_size = 512  # windows per validation batch (global)
  config.train.collapse_threshold = 0.85  # warn when one action exceeds this share
  config.train.init_from = ''  # checkpoint dir or PyTorch .pt to start from (fine-tuning)
  config.train.fresh_adapters = False  # with init_from: merge its adapters, start new ones

  config.decision = ml_collections.ConfigDict()
  config.decision.logit_bias = (0.0, 0.0, 0.0)  # added to logits before softmax
  config.decision.confidence_threshold = 0.0  # BUY/SELL below this confidence become HOLD
  return config
