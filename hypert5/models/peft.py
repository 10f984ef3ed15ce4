"""The generated-parameter pytrees, `Prefix` and `LoRA`, and how they reach the layers.

This is the one place that knows their shapes. Both carry a leading batch axis so that one
batch can mix tasks (each row has its own generated parameters); a batch axis of size 1
broadcasts over every row (one task, many queries).

Block kinds name where parameters are injected. Attention kinds are `encoder_self`,
`decoder_self` and `decoder_cross`; LoRA may also target the MLPs (`encoder_mlp`,
`decoder_mlp`). A decoder-only model uses `decoder_self` alone, so nothing here assumes an
encoder.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp

ATTENTION_KINDS = ("encoder_self", "decoder_self", "decoder_cross")
MLP_KINDS = ("encoder_mlp", "decoder_mlp")
ATTENTION_PROJECTIONS = ("q", "k", "v", "o")

# (stack, module name inside a layer) for each block kind.
_KIND_TO_MODULE = {
    "encoder_self": ("encoder", "attention"),
    "decoder_self": ("decoder", "self_attention"),
    "decoder_cross": ("decoder", "encoder_decoder_attention"),
    "encoder_mlp": ("encoder", "mlp"),
    "decoder_mlp": ("decoder", "mlp"),
}
_PROJ_TO_PARAM = {"q": "query", "k": "key", "v": "value", "o": "out",
                  "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}

# Logical axis names (see hypert5/training/partitioning.py).
PREFIX_AXES = ("batch", "layers", "prefix", "heads", "kv")
LORA_A_AXES = ("batch", "layers", None, "lora_rank")
LORA_B_AXES = ("batch", "layers", "lora_rank", None)


@flax.struct.dataclass
class Prefix:
  """Key/value prefixes: kind -> [batch, layers, prefix_len, heads, head_dim].

  Prefix columns are always visible (never masked) and get zero relative-position bias, so
  a prefix acts like P extra memory slots that sit outside the sequence.
  """

  keys: dict[str, jax.Array]
  values: dict[str, jax.Array]

  @property
  def length(self) -> int:
    return next(iter(self.keys.values())).shape[2]

  @property
  def batch_size(self) -> int:
    return next(iter(self.keys.values())).shape[0]


@flax.struct.dataclass
class LoRA:
  """Low-rank deltas: kind -> projection -> A [batch, layers, d_in, rank], B [batch, layers, rank, d_out].

  The projection output becomes x·W + x·A·B·(alpha/rank).
  """

  a: dict[str, dict[str, jax.Array]]
  b: dict[str, dict[str, jax.Array]]
  alpha: float = flax.struct.field(pytree_node=False, default=16.0)

  @property
  def rank(self) -> int:
    return next(iter(next(iter(self.a.values())).values())).shape[-1]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def batch_size(self) -> int:
    return next(iter(next(iter(self.a.values())).values())).shape[0]

  def targets(self) -> list[tuple[str, str]]:
    return [(kind, proj) for kind, projs in self.a.items() for proj in projs]


PEFT = Prefix | LoRA | None


def check_kind(kind: str, allowed: tuple[str, ...]) -> None:
  if kind not in allowed:
    raise ValueError(f"unknown block kind {kind!r}; expected one of {allowed}")


def layer_trees(peft: PEFT, stack: str) -> dict[str, Any]:
  """Regroups `peft` for one stack ("encoder" or "decoder") into per-module trees.

  Returns {module name: {"prefix": (k, v)} | {"lora": {param name: (A, B·scale)}}}, every
  array with the layers axis first ([layers, batch, ...]) so a layer loop can index it and
  nn.scan can slice it. The LoRA scale is folded into B here, once, instead of per layer.
  """
  trees: dict[str, Any] = {}
  if peft is None:
    return trees
  layers_first = lambda x: jnp.moveaxis(x, 1, 0)
  if isinstance(peft, Prefix):
    for kind in peft.keys:
      check_kind(kind, ATTENTION_KINDS)
      kind_stack, module = _KIND_TO_MODULE[kind]
      if kind_stack == stack:
        trees.setdefault(module, {})["prefix"] = (
            layers_first(peft.keys[kind]), layers_first(peft.values[kind]))
  elif isinstance(peft, LoRA):
    for kind, projs in peft.a.items():
      check_kind(kind, ATTENTION_KINDS + MLP_KINDS)
      kind_stack, module = _KIND_TO_MODULE[kind]
      if kind_stack != stack:
        continue
      lora = trees.setdefault(module, {}).setdefault("lora", {})
      for proj, a in projs.items():
        b = peft.b[kind][proj] * peft.scale
        lora[_PROJ_TO_PARAM[proj]] = (layers_first(a), layers_first(b))
  else:
    raise TypeError(f"peft must be a Prefix, a LoRA or None, not {type(peft).__name__}")
  return trees


def layer_slice(trees: Mapping[str, Any], i: int) -> dict[str, Any]:
  """The per-layer view of `layer_trees` output for layer i."""
  return jax.tree.map(lambda x: x[i], dict(trees))


def broadcast_batch(peft: PEFT, batch_size: int) -> PEFT:
  """Repeats a size-1 batch axis to `batch_size` (other sizes must already match)."""
  if peft is None:
    return None

  def expand(x):
    if x.shape[0] == batch_size:
      return x
    if x.shape[0] != 1:
      raise ValueError(f"peft batch {x.shape[0]} cannot broadcast to batch {batch_size}")
    return jnp.broadcast_to(x, (batch_size,) + x.shape[1:])
  return jax.tree.map(expand, peft)


def repeat_batch(peft: PEFT, repeats: int) -> PEFT:
  """Repeats each row `repeats` times (for beam search: [b, ...] -> [b*repeats, ...])."""
  if peft is None:
    return None
  return jax.tree.map(lambda x: x if x.shape[0] == 1 else jnp.repeat(x, repeats, axis=0), peft)


def zero_prefix(config, batch_size: int, length: int,
                kinds: tuple[str, ...] = ATTENTION_KINDS, dtype=jnp.float32) -> Prefix:
  """An all-zero Prefix for a T5Config-like config (num_heads, head_dim, layer counts)."""
  shapes = {k: (batch_size, _num_layers(config, k), length, config.num_heads, config.head_dim)
            for k in kinds}
  zeros = {k: jnp.zeros(s, dtype) for k, s in shapes.items()}
  return Prefix(keys=zeros, values=dict(zeros))


def lora_shapes(config, kind: str, proj: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(A shape, B shape) without the batch axis: ([layers, d_in, rank], [layers, rank, d_out])."""
  layers = _num_layers(config, kind)
  d_in, d_out = projection_dims(config, proj)
  return (layers, d_in, rank), (layers, rank, d_out)


def projection_dims(config, proj: str) -> tuple[int, int]:
  d, inner, ff = config.d_model, config.num_heads * config.head_dim, config.d_ff
  dims = {"q": (d, inner), "k": (d, inner), "v": (d, inner), "o": (inner, d),
          "wi": (d, ff), "wi_0": (d, ff), "wi_1": (d, ff), "wo": (ff, d)}
  if proj not in dims:
    raise ValueError(f"unknown LoRA projection {proj!r}; expected one of {sorted(dims)}")
  return dims[proj]


def _num_layers(config, kind: str) -> int:
  return config.num_encoder_layers if kind.startswith("encoder") else config.num_decoder_layers


def merge_lora(params: dict, lora: LoRA, config) -> dict:
  """Folds a batch-1 LoRA into unscanned T5 params: kernel += A·B·(alpha/rank) per layer."""
  if lora.batch_size != 1:
    raise ValueError(f"merge_lora takes one task's LoRA (batch 1), got batch {lora.batch_size}")
  merged = jax.tree.map(lambda x: x, params)  # new containers; leaves are replaced below
  for kind, proj in lora.targets():
    stack, module = _KIND_TO_MODULE[kind]
    a, b = lora.a[kind][proj][0], lora.b[kind][proj][0]
    for i in range(a.shape[0]):
      layer = merged[stack][f"layers_{i}"][module][_PROJ_TO_PARAM[proj]]
      delta = (a[i] @ b[i]) * lora.scale
      layer["kernel"] = layer["kernel"] + delta.astype(layer["kernel"].dtype)
  return merged
