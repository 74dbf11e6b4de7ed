"""PyTorch reference of FLAG-TRADER, written from SPEC section 1 (needs the `torch` extra).

Its state dict has exactly the key names and shapes of the original `flag_trader_best.pt`
files, so it serves as the ground truth for conversion tests and as the PyTorch side of
benchmarks/bench_vs_torch.py. Like the original, attention is unmasked by default;
`causal=True` gives this project's default mask for parity at T > 1.

Nothing else in the package imports this module, so `himari_jax` itself never needs torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from himari_jax.model import flag_trader as model_lib


class LoRA(nn.Module):
  """The adapter of a LoRA linear: `(x @ lora_A @ lora_B) * alpha / rank`."""

  def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
    super().__init__()
    self.lora_A = nn.Parameter(torch.empty(in_features, rank))
    self.lora_B = nn.Parameter(torch.zeros(rank, out_features))
    # On an (in, rank) tensor this is U(-1/sqrt(rank), 1/sqrt(rank)), as in the original.
    nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
    self.scaling = alpha / rank

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return (x @ self.lora_A @ self.lora_B) * self.scaling


class LoRALinear(nn.Module):
  """`base(x) + lora(x)` with a frozen `base` nn.Linear; x: (..., in) -> (..., out)."""

  def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
    super().__init__()
    self.base = nn.Linear(in_features, out_features)
    self.base.requires_grad_(False)
    self.lora = LoRA(in_features, out_features, rank, alpha)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.base(x) + self.lora(x)


class MultiHeadAttentionTorch(nn.Module):
  """Self-attention with LoRA projections and dropout on the attention probabilities."""

  def __init__(self, d_model: int, num_heads: int, rank: int, alpha: float, dropout: float):
    super().__init__()
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    self.q_proj = LoRALinear(d_model, d_model, rank, alpha)
    self.k_proj = LoRALinear(d_model, d_model, rank, alpha)
    self.v_proj = LoRALinear(d_model, d_model, rank, alpha)
    self.out_proj = LoRALinear(d_model, d_model, rank, alpha)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """x: (batch, T, d); mask: (T, T) bool, True where attention is allowed, or None."""
    batch, length, d = x.shape

    def split_heads(y):
      return y.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
    scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
    if mask is not None:
      scores = scores.masked_fill(~mask, float('-inf'))
    probs = self.dropout(F.softmax(scores, dim=-1))
    out = (probs @ v).transpose(1, 2).reshape(batch, length, d)
    return self.out_proj(out)


class TransformerBlockTorch(nn.Module):
  """Post-LN block; `ffn` is Sequential(LoRALinear, GELU, Dropout, LoRALinear, Dropout)."""

  def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, rank: int,
               alpha: float, dropout: float):
    super().__init__()
    self.attention = MultiHeadAttentionTorch(d_model, num_heads, rank, alpha, dropout)
    self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
    self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
    self.ffn = nn.Sequential(
        LoRALinear(d_model, dim_feedforward, rank, alpha),
        nn.GELU(),
        nn.Dropout(dropout),
        LoRALinear(dim_feedforward, d_model, rank, alpha),
        nn.Dropout(dropout),
    )

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    x = self.norm1(x + self.attention(x, mask))
    return self.norm2(x + self.ffn(x))


class FlagTraderTorch(nn.Module):
  """states: (batch, T, state_dim) float32 -> logits: (batch, T, action_dim)."""

  def __init__(self, state_dim: int = 60, action_dim: int = 3, d_model: int = 768,
               num_layers: int = 12, num_heads: int = 8, dim_feedforward: int = 3072,
               lora_rank: int = 16, max_length: int = 256, lora_alpha: float = 16.0,
               dropout: float = 0.1, causal: bool = False):
    super().__init__()
    self.causal = causal
    self.state_embedding = nn.Linear(state_dim, d_model)
    self.pos_embedding = nn.Parameter(torch.zeros(1, max_length, d_model))
    self.transformer_blocks = nn.ModuleList([
        TransformerBlockTorch(d_model, num_heads, dim_feedforward, lora_rank, lora_alpha, dropout)
        for _ in range(num_layers)
    ])
    self.output_norm = nn.LayerNorm(d_model, eps=1e-5)
    self.action_head = nn.Linear(d_model, action_dim)
    for weight in (self.state_embedding.weight, self.action_head.weight, self.pos_embedding):
      nn.init.normal_(weight, std=0.02)
    nn.init.zeros_(self.state_embedding.bias)
    nn.init.zeros_(self.action_head.bias)

  @classmethod
  def from_model_config(cls, config: model_lib.ModelConfig) -> FlagTraderTorch:
    """The reference at the sizes of a Flax `ModelConfig` (all six projections adapted)."""
    if set(config.lora_targets) != set(model_lib.LORA_PROJECTIONS):
      raise ValueError('the PyTorch reference puts adapters on all six projections; '
                       f'got model.lora_targets={config.lora_targets}.')
    return cls(config.state_dim, config.action_dim, config.d_model, config.num_layers,
               config.num_heads, config.dim_feedforward, config.lora_rank, config.max_length,
               config.lora_alpha, config.dropout_rate, config.causal)

  def forward(self, states: torch.Tensor) -> torch.Tensor:
    length = states.shape[1]
    x = self.state_embedding(states) + self.pos_embedding[:, :length]
    mask = None
    if self.causal and length > 1:
      mask = torch.ones(length, length, dtype=torch.bool, device=states.device).tril()
    for block in self.transformer_blocks:
      x = block(x, mask)
    return self.action_head(self.output_norm(x))
