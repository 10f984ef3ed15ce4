"""HyperT5: a T5 encoder-decoder that reads few-shot text and emits a `Prefix` or `LoRA`.

The encoder reads `hyper_encoder_input_tokens`; the decoder reads N learned query embeddings
(no tokens, no causal mask) and cross-attends to the encoded examples; generator heads map
the N decoder outputs to the generated parameters of a frozen T5 of the same architecture:

- HyperT5-Prefix: N = prefix length. Per block kind and per K/V: RMS norm -> MLP ->
  layers x heads x head_dim, so query p becomes prefix position p of every layer.
- HyperT5-LoRA: one query per (target, layer). A shared MLP per projection name (q, k, v,
  o, ...) emits A (d_in x rank) and B (rank x d_out); B's output layer starts at zero, so
  the initial delta is exactly zero and training starts from the frozen model. A and B
  change, per optimizer step, at a directly trained LoRA's rate (`_RateMatchedDense`).

The body (embedder, encoder, decoder) has the downstream T5's parameter names, so it is
initialised by copying the downstream checkpoint (`init_from_downstream`), as in the paper.
`extra_encoder_layers` grows the body's encoder past the downstream's: the new layers follow
the copied ones with their output projections at zero, so they start as the identity.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hypert5.models import peft as peft_lib
from hypert5.models.configs import T5Config
from hypert5.models.t5 import Dense, Decoder, Embedder, Encoder, RMSNorm, tokens_matmul

Array = jax.Array

DEFAULT_LORA_TARGETS = (
    ("encoder_self", "q"), ("encoder_self", "v"),
    ("decoder_self", "q"), ("decoder_self", "v"),
    ("decoder_cross", "q"), ("decoder_cross", "v"),
)


@dataclasses.dataclass(frozen=True)
class HyperT5Config:
  """HyperT5 over a downstream `t5` architecture (the body has the same architecture, with
  `extra_encoder_layers` more encoder layers).

  Defaults (ours; the paper leaves them open): 32 prefix positions for all three attention
  kinds; generator MLP width 512; LoRA rank 8, alpha 16 (scale 2) on q and v of every
  attention block.
  """

  t5: T5Config
  peft_type: str = "prefix"  # "prefix" | "lora"
  prefix_length: int = 32
  prefix_kinds: tuple[str, ...] = peft_lib.ATTENTION_KINDS
  head_hidden: int = 512
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[tuple[str, str], ...] = DEFAULT_LORA_TARGETS
  extra_encoder_layers: int = 0

  def __post_init__(self):
    if self.extra_encoder_layers < 0:
      raise ValueError(f"HyperT5Config.extra_encoder_layers={self.extra_encoder_layers}; "
                       "expected 0 or more")
    if self.peft_type not in ("prefix", "lora"):
      raise ValueError(f"HyperT5Config.peft_type={self.peft_type!r}; expected 'prefix' or 'lora'")
    for kind in self.prefix_kinds:
      peft_lib.check_kind(kind, peft_lib.ATTENTION_KINDS)
    for kind, proj in self.lora_targets:
      peft_lib.check_kind(kind, peft_lib.ATTENTION_KINDS + peft_lib.MLP_KINDS)
      peft_lib.projection_dims(self.t5, proj)

  @property
  def body(self) -> T5Config:
    """The body's architecture: the downstream's, plus `extra_encoder_layers`."""
    return self.t5.replace(
        num_encoder_layers=self.t5.num_encoder_layers + self.extra_encoder_layers)

  @property
  def num_queries(self) -> int:
    if self.peft_type == "prefix":
      return self.prefix_length
    return sum(peft_lib.lora_shapes(self.t5, k, p, 1)[0][0] for k, p in self.lora_targets)

  def replace(self, **changes: Any) -> "HyperT5Config":
    return dataclasses.replace(self, **changes)


class _MLPHead(nn.Module):
  """RMS norm -> dense -> GELU: the shared trunk of a generator head."""
  t5: T5Config
  hidden: int

  @nn.compact
  def __call__(self, h: Array) -> Array:
    h = RMSNorm(self.t5, name="norm")(h)
    h = Dense(self.hidden, ("embed", "mlp"), 1.0, self.t5, name="hidden")(h)
    return jax.nn.gelu(h, approximate=True)


class PrefixHead(nn.Module):
  config: HyperT5Config

  @nn.compact
  def __call__(self, h: Array) -> peft_lib.Prefix:
    """h [batch, P, d_model] -> Prefix with [batch, layers, P, heads, head_dim] leaves."""
    cfg, t5 = self.config, self.config.t5
    keys, values = {}, {}
    for kind in cfg.prefix_kinds:
      layers = peft_lib.lora_shapes(t5, kind, "q", 1)[0][0]
      for name, out in (("key", keys), ("value", values)):
        y = _MLPHead(t5, cfg.head_hidden, name=f"{kind}_{name}")(h)
        y = Dense(layers * t5.inner_dim, ("mlp", "embed"), 1.0, t5,
                  name=f"{kind}_{name}_out")(y)
        y = y.reshape(h.shape[:2] + (layers, t5.num_heads, t5.head_dim))
        out[kind] = jnp.swapaxes(y, 1, 2).astype(jnp.float32)
    return peft_lib.Prefix(keys=keys, values=values)


class LoRAHead(nn.Module):
  config: HyperT5Config

  @nn.compact
  def __call__(self, h: Array) -> peft_lib.LoRA:
    """h [batch, num_queries, d_model] (one row per target layer) -> LoRA."""
    cfg, t5 = self.config, self.config.t5
    r = cfg.lora_rank
    trunks, a_out, b_out = {}, {}, {}
    a_tree, b_tree = {}, {}
    offset = 0
    for kind, proj in cfg.lora_targets:
      (layers, d_in, _), (_, _, d_out) = peft_lib.lora_shapes(t5, kind, proj, r)
      if proj not in trunks:  # one MLP per projection name, shared across block kinds
        trunks[proj] = _MLPHead(t5, cfg.head_hidden, name=f"{proj}_trunk")
        # A ~ N(0, 1/d_in) per entry for unit-scale trunk outputs, like PEFT's init scale.
        a_out[proj] = _RateMatchedDense(d_in * r, d_in ** -0.5, t5, name=f"{proj}_a")
        b_out[proj] = _RateMatchedDense(r * d_out, 0.0, t5, name=f"{proj}_b")
      x = trunks[proj](h[:, offset:offset + layers])
      offset += layers
      batch = h.shape[0]
      a = a_out[proj](x).reshape(batch, layers, d_in, r)
      b = b_out[proj](x).reshape(batch, layers, r, d_out)
      a_tree.setdefault(kind, {})[proj] = a.astype(jnp.float32)
      b_tree.setdefault(kind, {})[proj] = b.astype(jnp.float32)
    return peft_lib.LoRA(a=a_tree, b=b_tree, alpha=cfg.lora_alpha)


class _RateMatchedDense(nn.Module):
  """The LoRA head's output layer: y = x @ kernel / fan_in, y ~ N(0, out_std^2) at init for
  unit-scale x (out_std 0: zero, so B starts the delta at zero).

  Why the 1/fan_in: under Adam every kernel entry moves about lr per step, so a plain dense
  layer's output, a sum over fan_in coherent inputs, moves fan_in x lr: fan_in times a
  directly trained LoRA's A or B. A.B multiplies two such outputs. In the demo's stage 1
  that ran away: the readers' q deltas reached rms 274 (the q kernel's is 0.03),
  attention saturated, and the LoRA reader stayed at the bare query's loss. Dividing by
  fan_in (with the kernel's init scaled up to match) gives each generated entry about lr
  per step, as in LoRA tuning. Under Adafactor, whose steps are relative to the kernel's
  RMS, A's rate is unchanged; B starts from zero at the floor step Adafactor gives any
  zero parameter, as a directly trained LoRA's B does."""
  features: int
  out_std: float
  t5: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    init = (nn.initializers.normal(self.out_std * fan_in ** 0.5) if self.out_std
            else nn.initializers.zeros)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, ("mlp", "embed")),
                        (fan_in, self.features), jnp.dtype(self.t5.param_dtype))
    return tokens_matmul(x, kernel.astype(x.dtype)) / fan_in


class HyperT5(nn.Module):
  """few-shot tokens [batch, len] -> Prefix | LoRA with a leading batch axis."""
  config: HyperT5Config

  def setup(self):
    t5 = self.config.body
    self.token_embedder = Embedder(t5)
    self.encoder = Encoder(t5, self.token_embedder)
    self.decoder = Decoder(t5, self.token_embedder)
    self.queries = self.param(
        "queries", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("prefix", "embed")),
        (self.config.num_queries, t5.d_model), jnp.dtype(t5.param_dtype))
    self.head = (PrefixHead if self.config.peft_type == "prefix" else LoRAHead)(self.config)

  def __call__(self, hyper_encoder_input_tokens: Array,
               enable_dropout: bool = False) -> peft_lib.Prefix | peft_lib.LoRA:
    tokens = hyper_encoder_input_tokens
    encoded = self.encoder(tokens, None, enable_dropout)
    queries = jnp.broadcast_to(self.queries, (tokens.shape[0],) + self.queries.shape)
    hidden = self.decoder(encoded, tokens, None, None, enable_dropout, embedded=queries,
                          causal=False, return_hidden=True)
    return self.head(hidden)


BODY = ("token_embedder", "encoder", "decoder")


def init_hyper_params(config: HyperT5Config, rng: Array, downstream_params: dict | None = None,
                      hyper_len: int = 16) -> dict:
  """Random HyperT5 parameters; with `downstream_params`, the body is copied from them."""
  variables = jax.jit(HyperT5(config).init)(rng, jnp.ones((1, hyper_len), jnp.int32))
  params = nn.unbox(variables["params"])
  if downstream_params is not None:
    params = init_from_downstream(params, downstream_params)
  return params


def body_of(downstream_params: dict) -> dict:
  """The downstream parameters HyperT5's body shares: embedder, encoder, decoder minus its
  output layer."""
  body = {name: downstream_params[name] for name in BODY}
  body["decoder"] = {k: v for k, v in body["decoder"].items() if k != "logits_dense"}
  return body


def init_from_downstream(hyper_params: dict, downstream_params: dict) -> dict:
  """Copies the downstream body (embedder, encoder, decoder minus its output layer); encoder
  layers past the downstream's keep their initial values but start as the identity."""
  params = dict(hyper_params)
  for name, src in body_of(downstream_params).items():
    if name == "encoder":
      src = _grown_encoder(src, params[name])
    if jax.tree.map(jnp.shape, src) != jax.tree.map(jnp.shape, params[name]):
      raise ValueError(f"downstream {name!r} parameters do not match the hypermodel body; "
                       "are both built from the same T5Config (incl. scan_layers)?")
    params[name] = jax.tree.map(jnp.array, src)
  return params


def _grown_encoder(src: dict, own: dict) -> dict:
  """The downstream encoder `src` followed by the hypermodel's extra layers from `own`, their
  output projections (attention out, MLP wo) at zero: a pre-norm residual block whose
  output projections are zero adds nothing to its input."""
  def as_identity(layer):
    layer = jax.tree.map(lambda x: x, layer)  # a copy of the nested dicts
    for block, proj in (("attention", "out"), ("mlp", "wo")):
      layer[block][proj]["kernel"] = jnp.zeros_like(layer[block][proj]["kernel"])
    return layer

  grown = dict(src)
  for key in own.keys() - src.keys():  # layers_N, layers_N+1, ...
    grown[key] = as_identity(own[key])
  depth = lambda layers: jax.tree.leaves(layers)[0].shape[0]
  if "layers" in src and "layers" in own and depth(own["layers"]) > depth(src["layers"]):
    n = depth(src["layers"])  # scanned: layers stacked on axis 0
    grown["layers"] = jax.tree.map(lambda s, o: jnp.concatenate([s, o[n:].astype(s.dtype)]),
                                   src["layers"], as_identity(own["layers"]))
  return grown


def abstract_hyper_params(config: HyperT5Config, hyper_len: int = 16) -> Any:
  tokens = jax.ShapeDtypeStruct((1, hyper_len), jnp.int32)
  return jax.eval_shape(HyperT5(config).init, jax.random.key(0), tokens)["params"]
