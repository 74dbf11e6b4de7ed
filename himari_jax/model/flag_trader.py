"""FLAG-TRADER: a post-LayerNorm transformer whose projections are frozen Linears plus LoRA.

The parameter tree mirrors the PyTorch state dict of SPEC section 1 (see docs/ARCHITECTURE.md),
so converting a `flag_trader_best.pt` is a rename plus a transpose of Linear weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LORA_PROJECTIONS = ('q_proj', 'k_proj', 'v_proj', 'out_proj', 'ffn_1', 'ffn_2')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and options of FLAG-TRADER; defaults are the seed sizes."""

  state_dim: int = 60
  action_dim: int = 3
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 8
  dim_feedforward: int = 3072
  max_length: int = 256
  dropout_rate: float = 0.1
  # Dropout on the attention probabilities (the PyTorch original uses dropout_rate here too). It
  # has no fused kernel: 0.0 sends attention through `jax.nn.dot_product_attention`.
  attention_dropout: float = 0.1
  # Kernel of the fused path: None (XLA's, in JAX 0.10 on every backend), 'xla' or 'cudnn'
  # (cuDNN flash attention: GPUs from Ampere on, bfloat16/float16, head_dim <= 128).
  attention_implementation: str | None = None
  lora_rank: int = 16
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_PROJECTIONS
  freeze_base: bool = True
  causal: bool = True
  # Compute dtype of matmuls and activations; parameters, LayerNorms, softmax and logits stay
  # float32.
  dtype: str = 'float32'
  # Recompute each block's activations in the backward pass instead of storing them: memory
  # per block drops to its input, at the cost of a second forward pass.
  remat: bool = False

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(
          f'model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}; '
          'choose num_heads that divides d_model.')
    unknown = set(self.lora_targets) - set(LORA_PROJECTIONS)
    if unknown:
      raise ValueError(
          f'model.lora_targets has unknown projections {sorted(unknown)}; '
          f'valid: {",".join(LORA_PROJECTIONS)}.')
    for name in ('dropout_rate', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'model.{name}={getattr(self, name)} must be in [0, 1).')
    if self.attention_implementation not in (None, 'xla', 'cudnn'):
      raise ValueError(f'model.attention_implementation={self.attention_implementation!r} is '
                       "unknown; use None, 'xla' or 'cudnn'.")
    if self.lora_targets and self.lora_rank <= 0:
      raise ValueError('model.lora_rank must be positive when model.lora_targets is not empty.')

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> ModelConfig:
    """Builds from a `config.model` ConfigDict (or dict); unknown keys are an error."""
    values = dict(config)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
      raise ValueError(f'unknown model config fields {sorted(unknown)}; valid: {sorted(names)}.')
    targets = values.get('lora_targets', LORA_PROJECTIONS)
    if isinstance(targets, str):
      targets = tuple(t.strip() for t in targets.split(',') if t.strip())
    values['lora_targets'] = tuple(targets)
    return cls(**values)

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank > 0 else 0.0

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


def _torch_linear_init(fan_in: int):
  """PyTorch's default Linear init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class LoRADense(nn.Module):
  """`y = base(x) + (x @ lora_A @ lora_B) * alpha / rank`; rank 0 means no adapter.

  x: (..., in) -> y: (..., features). `base` holds the (frozen) kernel (in, features) and bias.
  """

  features: int
  rank: int = 16
  alpha: float = 16.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, fan_in = x.shape
    # 2-D matmuls: with (batch, T, in) inputs XLA:CPU transposes each adapter's gradient in a
    # slow fused copy (a quarter of a training step at T = 1). Same numbers either way.
    x = x.reshape(-1, fan_in)
    init = _torch_linear_init(fan_in)
    y = nn.Dense(self.features, kernel_init=init, bias_init=init, dtype=self.dtype,
                 name='base')(x)
    if self.rank > 0:
      # kaiming_uniform_(a=sqrt(5)) on an (in, rank) tensor has fan_in = rank.
      lora_a = self.param('lora_A', _torch_linear_init(self.rank), (fan_in, self.rank))
      lora_b = self.param('lora_B', nn.initializers.zeros, (self.rank, self.features))
      x, lora_a, lora_b = x.astype(self.dtype), lora_a.astype(self.dtype), lora_b.astype(self.dtype)
      y = y + (x @ lora_a) @ lora_b * (self.alpha / self.rank)
    return y.reshape(*lead, self.features)


class MultiHeadAttention(nn.Module):
  """Self-attention with LoRA projections.

  With `config.attention_dropout > 0` the scores go through an explicit softmax so dropout can
  act on the probabilities (the PyTorch original's path); with 0 through
  `jax.nn.dot_product_attention`: XLA's kernel, or cuDNN flash attention on a GPU with
  `config.attention_implementation='cudnn'`.
  """

  config: ModelConfig

  def _proj(self, name: str, features: int) -> LoRADense:
    cfg = self.config
    rank = cfg.lora_rank if name in cfg.lora_targets else 0
    return LoRADense(features, rank, cfg.lora_alpha, cfg.compute_dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, causal: bool, deterministic: bool) -> jax.Array:
    """x: (batch, T, d) -> (batch, T, d); `causal` hides later positions from earlier ones."""
    cfg = self.config
    batch, length, d = x.shape
    head_dim = d // cfg.num_heads

    def split_heads(y):
      return y.reshape(batch, length, cfg.num_heads, head_dim)

    q = split_heads(self._proj('q_proj', d)(x))
    k = split_heads(self._proj('k_proj', d)(x))
    v = split_heads(self._proj('v_proj', d)(x))
    if length == 1:
      # One key takes all the attention (softmax of one score is exactly 1), so q and k do not
      # affect the output and XLA drops their projections (1/6 of the matmuls at T = 1).
      # Dropout on that probability still scales the value, as in PyTorch.
      probs = nn.Dropout(cfg.attention_dropout)(jnp.ones((batch, cfg.num_heads, 1, 1), v.dtype),
                                                deterministic=deterministic)
      out = v * jnp.swapaxes(probs, 1, 2)
    elif cfg.attention_dropout > 0:
      scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
      if causal:
        mask = jnp.tril(jnp.ones((length, length), bool))
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
      probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
      probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
      out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                         implementation=cfg.attention_implementation)
    return self._proj('out_proj', d)(out.reshape(batch, length, d))


class TransformerBlock(nn.Module):
  """Post-LN block: norm1(x + attn(x)), then norm2(x + ffn_2(dropout(gelu(ffn_1(x)))))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, causal: bool, deterministic: bool) -> jax.Array:
    cfg = self.config

    def lora(name, features):
      rank = cfg.lora_rank if name in cfg.lora_targets else 0
      return LoRADense(features, rank, cfg.lora_alpha, cfg.compute_dtype, name=name)

    attended = MultiHeadAttention(cfg, name='attention')(x, causal, deterministic)
    x = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name='norm1')(x + attended)
    h = lora('ffn_1', cfg.dim_feedforward)(x)
    h = nn.gelu(h, approximate=False)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    h = lora('ffn_2', cfg.d_model)(h)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name='norm2')(x + h)


class FlagTrader(nn.Module):
  """states: (batch, T, state_dim) float32 -> logits: (batch, T, action_dim) float32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, states: jax.Array, *, deterministic: bool = True,
               causal: bool | None = None) -> jax.Array:
    cfg = self.config
    _, length, state_dim = states.shape
    if state_dim != cfg.state_dim:
      raise ValueError(f'states have {state_dim} features, the model expects {cfg.state_dim}.')
    if length > cfg.max_length:
      raise ValueError(f'context length {length} exceeds model.max_length={cfg.max_length}.')
    normal = nn.initializers.normal(stddev=0.02)
    x = nn.Dense(cfg.d_model, kernel_init=normal, bias_init=nn.initializers.zeros,
                 dtype=cfg.compute_dtype, name='state_embedding')(states)
    pos = self.param('pos_embedding', normal, (1, cfg.max_length, cfg.d_model))
    x = x + pos[:, :length].astype(x.dtype)
    causal = cfg.causal if causal is None else causal
    # `causal` and `deterministic` pick Python branches, so remat must not trace them.
    block = nn.remat(TransformerBlock, static_argnums=(2, 3)) if cfg.remat else TransformerBlock
    for i in range(cfg.num_layers):
      x = block(cfg, name=f'transformer_blocks_{i}')(x, causal, deterministic)
    x = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name='output_norm')(x)
    logits = nn.Dense(cfg.action_dim, kernel_init=normal, bias_init=nn.initializers.zeros,
                      dtype=cfg.compute_dtype, name='action_head')(x)
    return logits.astype(jnp.float32)


def init_params(config: ModelConfig, rng: jax.Array, context_length: int = 1) -> dict:
  """Initial parameters, initialised as the PyTorch original does."""
  dummy = jnp.zeros((1, context_length, config.state_dim), jnp.float32)
  return FlagTrader(config).init(rng, dummy)['params']


def param_shapes(config: ModelConfig) -> dict:
  """Parameter tree of `jax.ShapeDtypeStruct`s, without allocating the weights."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def param_labels(params: Any, freeze_base: bool = True) -> Any:
  """Tree of 'trainable' / 'frozen' labels for `optax.multi_transform`.

  Base Linear weights and biases (`.../base/...`) are frozen unless `freeze_base=False`;
  everything else (LoRA, LayerNorms, embeddings, head) is trainable.
  """

  def label(path, _):
    names = [getattr(k, 'key', getattr(k, 'name', None)) for k in path]
    return 'frozen' if freeze_base and 'base' in names else 'trainable'

  return jax.tree_util.tree_map_with_path(label, params)


def count_params(params: Any, labels: Any | None = None) -> dict[str, int]:
  """Number of parameters in total and per label: {'total', 'trainable', 'frozen'}."""
  sizes = jax.tree_util.tree_map(lambda p: int(np.prod(p.shape)), params)
  counts = {'total': sum(jax.tree_util.tree_leaves(sizes)), 'trainable': 0, 'frozen': 0}
  if labels is None:
    labels = param_labels(params)
  for size, lab in zip(jax.tree_util.tree_leaves(sizes), jax.tree_util.tree_leaves(labels),
                       strict=True):
    counts[lab] += size
  return counts


def merge_lora(params: Any, config: ModelConfig) -> tuple[Any, ModelConfig]:
  """Folds every adapter into its base kernel: `kernel + lora_A @ lora_B * alpha / rank`.

  Returns params without LoRA leaves and the matching config (no adapters), which compute the
  same function with one matmul per projection (faster inference).
  """

  def merge(tree):
    if not isinstance(tree, Mapping):
      return tree
    if 'lora_A' in tree and 'base' in tree:
      delta = (tree['lora_A'] @ tree['lora_B']) * config.lora_scale
      base = dict(tree['base'])
      base['kernel'] = base['kernel'] + delta.astype(base['kernel'].dtype)
      return {'base': base}
    return {k: merge(v) for k, v in tree.items()}

  return merge(params), dataclasses.replace(config, lora_targets=())
