"""HyperLlama: a Llama hypermodel built by gisting (Phang 2024, "Investigating the
Effectiveness of HyperTuning via Gisting").

One set of frozen Llama weights serves two streams:

- hyper stream: the few-shot text followed by G gist tokens (new trainable embeddings,
  default G = 16), run with a trainable LoRA (rank 8 on q, k, v, o, gate, up, down)
  switched on. The keys and values the gist tokens produce at every layer, keys taken
  *before* rotation, are the generated `Prefix` (kind "decoder_self", leaves
  [batch, layers, G, kv_heads, head_dim]).
- downstream stream: the frozen base with that prefix and no LoRA (llama.Llama with
  `peft=prefix`); its tokens never see the few-shot tokens.

Positions. Rotary embedding is relative, so we place the gist tokens at positions
0..G-1 in *both* streams: the few-shot tokens of a row with n real tokens sit at -n..-1
(pads are masked keys), the downstream tokens at G, G+1, .... Attention scores inside the
hyper stream are what positions 0..n+G-1 would give, and the prefix a row produces does not
depend on its few-shot length or padding. The downstream model rotates the stored keys at
0..G-1, exactly what the gist keys got in the hyper stream.

Training, one pass or two (`HyperLlamaConfig.one_pass`): two passes (the default) run the
hyper stream, then the downstream model with the generated prefix; gradients reach the
hyper stream through the prefix. One pass concatenates [few-shot, gist, downstream] into
one sequence with a gist mask (downstream rows cannot attend to few-shot columns) and LoRA
gated per token (on for few-shot and gist, off for downstream), as in Mu et al.'s gisting.
Both compute the same function, so they give the same loss and gradients (tested to float
rounding). Two passes is the default: its attention is (Lh+G)^2 + Ld(G+Ld) instead of
(Lh+G+Ld)^2 and it needs no LoRA gating; one pass exists to show the equivalence and for
setups that prefer a single sequence.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hypert5.models import peft as peft_lib
from hypert5.models.llama import PREFIX_KIND, Llama, LlamaConfig

Array = jax.Array

LORA_PROJECTIONS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")  # wi_0 gate, wi_1 up, wo down
DEFAULT_LORA_TARGETS = tuple(
    ("decoder_self" if p in peft_lib.ATTENTION_PROJECTIONS else "decoder_mlp", p)
    for p in LORA_PROJECTIONS)


@dataclasses.dataclass(frozen=True)
class HyperLlamaConfig:
  """HyperLlama over a frozen `llama`. Defaults follow the paper: 16 gist tokens, LoRA rank
  8 on q, k, v, o, gate, up, down of the hyper stream; alpha 16 (scale 2) is ours."""

  llama: LlamaConfig
  num_gist: int = 16
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[tuple[str, str], ...] = DEFAULT_LORA_TARGETS
  one_pass: bool = False  # training formulation; same loss either way (module docstring)

  def __post_init__(self):
    if self.num_gist < 1:
      raise ValueError(f"HyperLlamaConfig.num_gist={self.num_gist}; need at least 1")
    for kind, proj in self.lora_targets:
      lora_shapes(self.llama, kind, proj, 1)

  @property
  def prefix_length(self) -> int:
    return self.num_gist

  def replace(self, **changes: Any) -> "HyperLlamaConfig":
    return dataclasses.replace(self, **changes)


def lora_shapes(config: LlamaConfig, kind: str, proj: str,
                rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(A, B) shapes without the batch axis for a Llama projection (k/v are kv_heads wide)."""
  d, f, q, kv = config.d_model, config.d_ff, config.inner_dim, config.kv_dim
  dims = {("decoder_self", "q"): (d, q), ("decoder_self", "k"): (d, kv),
          ("decoder_self", "v"): (d, kv), ("decoder_self", "o"): (q, d),
          ("decoder_mlp", "wi_0"): (d, f), ("decoder_mlp", "wi_1"): (d, f),
          ("decoder_mlp", "wo"): (f, d)}
  if (kind, proj) not in dims:
    raise ValueError(f"LoRA target ({kind!r}, {proj!r}) does not exist in a Llama; expected "
                     f"one of {sorted(dims)}")
  d_in, d_out = dims[kind, proj]
  return (config.num_layers, d_in, rank), (config.num_layers, rank, d_out)


# --------------------------------------------------------------------------- parameters


def random_lora(config: HyperLlamaConfig, rng: Array) -> peft_lib.LoRA:
  """Batch-1 LoRA: A ~ N(0, 1/d_in), B = 0, so it starts as the frozen model."""
  a, b = {}, {}
  for i, (kind, proj) in enumerate(config.lora_targets):
    a_shape, b_shape = lora_shapes(config.llama, kind, proj, config.lora_rank)
    a.setdefault(kind, {})[proj] = (a_shape[1] ** -0.5) * jax.random.normal(
        jax.random.fold_in(rng, i), (1,) + a_shape)
    b.setdefault(kind, {})[proj] = jnp.zeros((1,) + b_shape)
  return peft_lib.LoRA(a=a, b=b, alpha=config.lora_alpha)


def random_prefix(config: HyperLlamaConfig, rng: Array, scale: float = 1.0) -> peft_lib.Prefix:
  """Batch-1 Prefix of N(0, scale^2) keys and values: prefix tuning from random values."""
  c = config.llama
  shape = (1, c.num_layers, config.num_gist, c.num_kv_heads, c.head_dim)
  k_rng, v_rng = jax.random.split(rng)
  return peft_lib.Prefix(keys={PREFIX_KIND: scale * jax.random.normal(k_rng, shape)},
                         values={PREFIX_KIND: scale * jax.random.normal(v_rng, shape)})


def init_hyper_params(config: HyperLlamaConfig, rng: Array,
                      base_params: dict | None = None) -> dict:
  """{"gist": [G, d_model], "lora": LoRA (batch 1)}. Gist embeddings are drawn at the scale
  of the base's token embeddings, so they start in-distribution."""
  embedding = None if base_params is None else base_params["token_embedder"]["embedding"]
  return _init_hyper_params(config, rng, embedding)


@functools.partial(jax.jit, static_argnums=0)  # one compiled program, not op-by-op
def _init_hyper_params(config: HyperLlamaConfig, rng: Array, embedding: Array | None) -> dict:
  g_rng, l_rng = jax.random.split(rng)
  std = 1.0 if embedding is None else jnp.std(embedding)
  gist = std * jax.random.normal(g_rng, (config.num_gist, config.llama.d_model))
  return {"gist": gist.astype(jnp.dtype(config.llama.param_dtype)),
          "lora": random_lora(config, l_rng)}


def abstract_hyper_params(config: HyperLlamaConfig) -> dict:
  """Trainable shapes boxed with logical axis names (for shardings), allocating nothing."""
  shapes = jax.eval_shape(functools.partial(init_hyper_params, config), jax.random.key(0))
  box = lambda names: lambda s: nn.LogicallyPartitioned(s, names)  # noqa: E731
  lora = shapes["lora"]
  return {"gist": box(("prefix", "embed"))(shapes["gist"]),
          "lora": lora.replace(a=jax.tree.map(box(peft_lib.LORA_A_AXES), lora.a),
                               b=jax.tree.map(box(peft_lib.LORA_B_AXES), lora.b))}


# --------------------------------------------------------------------------- streams


def _hyper_inputs(config: HyperLlamaConfig, hyper_params: dict, base_params: dict,
                  hyper_tokens: Array) -> tuple[Array, Array, Array]:
  """Embedded [few-shot, gist] [b, Lh+G, d], rotary positions [b, Lh+G], key validity."""
  b, lh = hyper_tokens.shape
  g = config.num_gist
  model = Llama(config.llama)
  emb = model.apply({"params": base_params}, hyper_tokens, method=Llama.embed)
  gist = jnp.broadcast_to(hyper_params["gist"].astype(emb.dtype), (b, g, emb.shape[-1]))
  real = hyper_tokens != 0  # pad id 0 (hyper_input_tokens never hold a bos)
  n = real.sum(axis=1, keepdims=True)
  few_pos = jnp.cumsum(real, axis=1) - 1 - n  # real few-shot tokens at -n..-1
  positions = jnp.concatenate([few_pos, jnp.broadcast_to(jnp.arange(g), (b, g))], axis=1)
  valid = jnp.concatenate([real, jnp.ones((b, g), bool)], axis=1)
  return jnp.concatenate([emb, gist], axis=1), positions, valid


def _as_prefix(kv) -> peft_lib.Prefix:
  k, v = (jnp.moveaxis(x, 0, 1).astype(jnp.float32) for x in kv)  # -> [b, layers, G, ...]
  return peft_lib.Prefix(keys={PREFIX_KIND: k}, values={PREFIX_KIND: v})


def _causal(t: int) -> Array:
  return jnp.tril(jnp.ones((t, t), bool))


def generate_prefix(config: HyperLlamaConfig, hyper_params: dict, base_params: dict,
                    hyper_tokens: Array) -> peft_lib.Prefix:
  """The hyper stream: few-shot tokens [b, Lh] (right-padded with 0) -> Prefix [b, ...]."""
  x, positions, valid = _hyper_inputs(config, hyper_params, base_params, hyper_tokens)
  lh, t = hyper_tokens.shape[1], x.shape[1]
  mask = (_causal(t)[None] & valid[:, None, :])[:, None]
  _, kv = Llama(config.llama).apply(
      {"params": base_params}, x, positions, mask, hyper_params["lora"],
      kv_range=(lh, lh + config.num_gist), method=Llama.stream)
  return _as_prefix(kv)


def downstream_logits(config: LlamaConfig, base_params: dict, tokens: Array,
                      prefix: peft_lib.Prefix | None = None) -> Array:
  """The downstream stream: frozen base, prefix at positions 0..G-1, no LoRA."""
  return Llama(config).apply({"params": base_params}, tokens, prefix)


def one_pass_logits(config: HyperLlamaConfig, hyper_params: dict, base_params: dict,
                    hyper_tokens: Array, tokens: Array,
                    gist_kv: peft_lib.Prefix | None = None) -> tuple[Array, peft_lib.Prefix]:
  """[few-shot, gist, downstream] as one sequence under the gist mask.

  Returns (downstream logits [b, Ld, V], the gist keys / values as a Prefix). `gist_kv`
  replaces the gist tokens' keys / values (fixing the prefix, for tests of the mask).
  """
  x_h, pos_h, valid_h = _hyper_inputs(config, hyper_params, base_params, hyper_tokens)
  b, ld = tokens.shape
  lh, g = hyper_tokens.shape[1], config.num_gist
  model = Llama(config.llama)
  x_d = model.apply({"params": base_params}, tokens, method=Llama.embed)
  x = jnp.concatenate([x_h, x_d.astype(x_h.dtype)], axis=1)
  positions = jnp.concatenate([pos_h, jnp.broadcast_to(g + jnp.arange(ld), (b, ld))], axis=1)
  t = lh + g + ld
  col, row = jnp.arange(t)[None, :], jnp.arange(t)[:, None]
  gist_mask = ~((row >= lh + g) & (col < lh))  # downstream rows never see few-shot columns
  valid = jnp.concatenate([valid_h, jnp.ones((b, ld), bool)], axis=1)
  mask = ((_causal(t) & gist_mask)[None] & valid[:, None, :])[:, None]
  gate = (jnp.arange(t) < lh + g).astype(jnp.float32)[None, :, None]  # LoRA: hyper tokens only
  logits, kv = model.apply({"params": base_params}, x, positions, mask, hyper_params["lora"],
                           gate, kv_range=(lh, lh + g), logits_from=lh + g, gist_kv=gist_kv,
                           method=Llama.stream)
  return logits, _as_prefix(kv)


def hyper_logits(config: HyperLlamaConfig, hyper_params: dict, base_params: dict,
                 hyper_tokens: Array, tokens: Array) -> Array:
  """Downstream logits [b, Ld, V] for few-shot tokens [b, Lh] and downstream tokens [b, Ld],
  in one or two passes as config.one_pass says."""
  if config.one_pass:
    return one_pass_logits(config, hyper_params, base_params, hyper_tokens, tokens)[0]
  prefix = generate_prefix(config, hyper_params, base_params, hyper_tokens)
  return downstream_logits(config.llama, base_params, tokens, prefix)
