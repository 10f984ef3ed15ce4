"""Typed model configs and the named T5 sizes (tiny … xxl).

Configs are frozen dataclasses so they can be hashed into jit caches and bound by gin at
the edge (main.py); the library itself never needs gin.
"""
from __future__ import annotations

import dataclasses
from typing import Any

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """A T5 encoder-decoder. Defaults are T5 v1.1 / LM-adapted small."""

  vocab_size: int = 32128
  d_model: int = 512
  d_ff: int = 1024
  num_heads: int = 6
  head_dim: int = 64
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  # ("relu",) is T5 v1.0; ("gelu", "linear") is the gated-GELU of v1.1 (wi_0 * wi_1).
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  # v1.0 ties the output projection to the embedding and scales by d_model**-0.5.
  tie_embeddings: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: str = "float32"        # compute dtype (bf16 on accelerators)
  param_dtype: str = "float32"  # master parameters stay fp32
  scan_layers: bool = False     # nn.scan over layers: one compiled layer, stacked params
  remat_policy: str = "none"    # one of REMAT_POLICIES

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"T5Config.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.mlp_activations not in (("relu",), ("gelu", "linear"), ("gelu",)):
      raise ValueError(
          f"T5Config.mlp_activations={self.mlp_activations!r}; expected ('relu',) for T5 "
          "v1.0 or ('gelu', 'linear') for the gated-GELU of T5 v1.1")

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def gated_mlp(self) -> bool:
    return len(self.mlp_activations) == 2

  def replace(self, **changes: Any) -> "T5Config":
    return dataclasses.replace(self, **changes)


_V11 = dict(mlp_activations=("gelu", "linear"), tie_embeddings=False)

# T5 v1.1 dimensions (google/t5-v1_1-*, *-lm-adapt); tiny is for tests and the demo.
SIZES: dict[str, T5Config] = {
    "tiny": T5Config(vocab_size=384, d_model=64, d_ff=128, num_heads=4, head_dim=16,
                     num_encoder_layers=2, num_decoder_layers=2, **_V11),
    "small": T5Config(d_model=512, d_ff=1024, num_heads=6, head_dim=64,
                      num_encoder_layers=8, num_decoder_layers=8, **_V11),
    "base": T5Config(d_model=768, d_ff=2048, num_heads=12, head_dim=64,
                     num_encoder_layers=12, num_decoder_layers=12, **_V11),
    "large": T5Config(d_model=1024, d_ff=2816, num_heads=16, head_dim=64,
                      num_encoder_layers=24, num_decoder_layers=24, **_V11),
    "xl": T5Config(d_model=2048, d_ff=5120, num_heads=32, head_dim=64,
                   num_encoder_layers=24, num_decoder_layers=24, **_V11),
    "xxl": T5Config(d_model=4096, d_ff=10240, num_heads=64, head_dim=64,
                    num_encoder_layers=24, num_decoder_layers=24, **_V11),
    "t5_small_v1_0": T5Config(d_model=512, d_ff=2048, num_heads=8, head_dim=64,
                              num_encoder_layers=6, num_decoder_layers=6,
                              mlp_activations=("relu",), tie_embeddings=True),
}


def get_config(name: str, **overrides: Any) -> T5Config:
  """Returns the named size with field overrides, e.g. get_config("base", dtype="bfloat16")."""
  if name not in SIZES:
    raise KeyError(f"unknown T5 size {name!r}; known sizes: {sorted(SIZES)}")
  return SIZES[name].replace(**overrides)
