"""T5 (v1.0 and v1.1 / LM-adapted) in Flax Linen, with prefix and LoRA injection points.

Parameter names follow T5X (`encoder/layers_0/attention/query/kernel`, ...) so T5X
checkpoints map one to one and Hugging Face ones by a fixed rename + transpose
(hypert5/training/model_io.py). Every parameter carries logical axis names; main
activations carry `activation_*` names; hypert5/training/partitioning.py maps both onto the
mesh.

Conventions (t5x): token id 0 is padding; the encoder masks padded keys; the decoder is
causal; attention logits are not scaled by 1/sqrt(head_dim) (T5 folds that into the
initialisation); logits are float32 whatever the compute dtype.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hypert5.models import softmax_attention
from hypert5.models import peft as peft_lib
from hypert5.models.configs import T5Config

Array = jax.Array

constrain = nn.with_logical_constraint


def _param(module: nn.Module, name: str, init: Callable, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _dtype(name: str):
  return jnp.dtype(name)


class RMSNorm(nn.Module):
  """T5 layer norm: no mean subtraction, no bias; variance in float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                   _dtype(cfg.param_dtype))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.layer_norm_eps)
    return (x32 * scale.astype(jnp.float32)).astype(_dtype(cfg.dtype))


def tokens_matmul(x: Array, w: Array, **dot_kwargs) -> Array:
  """x [..., d_in] @ w [d_in, d_out] with the tokens as one axis: the gradient of w is then
  one [tokens, d_in] x [tokens, d_out] product. Over [batch, length] XLA:CPU contracted two
  axes and first transposed the output gradient in a slow copy (the demo hypermodel's MLP,
  forward + backward: 12.6 -> 4.4 ms; its training step 0.150 -> 0.121-0.128 s). Merging
  the axes is free while only the batch is sharded (partitioning's rules leave the length
  whole); a sharded length would make GSPMD reshard here."""
  y = jnp.dot(x.reshape(-1, x.shape[-1]), w, **dot_kwargs)
  return y.reshape(x.shape[:-1] + (w.shape[-1],))


def lora_delta(x: Array, pair: tuple[Array, Array]) -> Array:
  """(x @ A) @ B for A [batch or 1, d_in, r], B [batch or 1, r, d_out] (B holds alpha/r)."""
  a, b = (w.astype(x.dtype) for w in pair)
  if a.shape[0] == 1 and b.shape[0] == 1:  # one LoRA for the whole batch
    return tokens_matmul(tokens_matmul(x, a[0]), b[0])
  return jnp.matmul(jnp.matmul(x, a), b)


class Dense(nn.Module):
  """x @ kernel, plus an optional low-rank delta (x @ A) @ B, per example or shared
  (`lora_delta`)."""
  features: int
  axes: tuple[str, str]
  init_scale: float
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, lora: tuple[Array, Array] | None = None) -> Array:
    cfg = self.config
    dtype = _dtype(cfg.dtype)
    init = nn.initializers.variance_scaling(self.init_scale, "fan_in", "truncated_normal")
    kernel = _param(self, "kernel", init, (x.shape[-1], self.features), self.axes,
                    _dtype(cfg.param_dtype))
    x = x.astype(dtype)
    y = tokens_matmul(x, kernel.astype(dtype))
    if lora is not None:
      y = y + lora_delta(x, lora)
    return y


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """T5's bucketing of (key position - query position); float32 log as in the reference."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
    relative_position = jnp.abs(relative_position)
  else:
    relative_position = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  safe = jnp.maximum(relative_position, 1).astype(jnp.float32)
  if_large = max_exact + (
      jnp.log(safe / max_exact) / np.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return buckets + jnp.where(is_small, relative_position, if_large)


class RelativePositionBias(nn.Module):
  """Learned per-head bias over relative-position buckets, shared by a stack's layers."""
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """Returns float32 bias [1, heads, len(query_positions), len(key_positions)]."""
    cfg = self.config
    table = _param(self, "rel_embedding",
                   nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                   (cfg.num_heads, cfg.relative_attention_num_buckets),
                   ("heads", "relpos_buckets"), _dtype(cfg.param_dtype))
    rel = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(rel, self.bidirectional,
                                       cfg.relative_attention_num_buckets,
                                       cfg.relative_attention_max_distance)
    bias = jnp.take(table.astype(jnp.float32), buckets, axis=1)  # [heads, q, k]
    return bias[None]


class Attention(nn.Module):
  """Multi-head attention with an optional key/value prefix, LoRA on q/k/v/o and a KV cache.

  `decode=True` turns on the cache. Self-attention: the first call (at init, on a
  full-length input) creates zero `cached_key`/`cached_value` variables; later calls take
  one token and write it at `decode_position`. Cross-attention (`static_kv`): the first
  call stores the keys and values of the encoded input (prefix included), laid out for a
  one-token query ([b, h, d, k] and [b, h, k, d]); later calls read them, once per input
  row: beam search's queries arrive as rows x beams and a row's beams read its copy
  together. Recomputing them every step cost XLA on CPU a transposing copy of both per
  layer and step: 16 copies of 3.2 ms in each 51 ms step for T5-small, 8 x 512 tokens.
  """
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  static_kv: bool = False  # cross-attention: keys and values fixed for a whole decode

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array, bias: Array | None,
               peft: dict[str, Any] | None = None, decode_position: Array | None = None) -> Array:
    cfg = self.config
    peft = peft or {}
    lora = peft.get("lora", {})
    d, inner, h, hd = cfg.d_model, cfg.inner_dim, cfg.num_heads, cfg.head_dim
    # T5X initialisation: the 1/sqrt(head_dim) attention scale lives in the query init.
    dense = functools.partial(Dense, config=cfg)
    split = lambda x: x.reshape(x.shape[:-1] + (h, hd))
    q = split(dense(inner, ("embed", "joined_kv"), 1.0 / hd, name="query")(
        inputs_q, lora.get("query")))
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    if self.decode and self.static_kv and self.has_variable("cache", "cached_key"):
      out = self._cached_cross_attention(q, mask)
    else:
      k = split(dense(inner, ("embed", "joined_kv"), 1.0, name="key")(inputs_kv, lora.get("key")))
      v = split(dense(inner, ("embed", "joined_kv"), 1.0, name="value")(
          inputs_kv, lora.get("value")))
      if self.decode and not self.static_kv:
        k, v = self._update_cache(k, v, decode_position)
      if "prefix" in peft:
        k, v, mask, bias = _with_prefix(peft["prefix"], k, v, mask, bias)
      if self.decode and self.static_kv:  # init pass: keep them for the decode steps
        self.variable("cache", "cached_key", lambda: jnp.transpose(k, (0, 2, 3, 1)))
        self.variable("cache", "cached_value", lambda: jnp.transpose(v, (0, 2, 1, 3)))
      no_dropout = self.deterministic or cfg.dropout_rate == 0.0
      if no_dropout and softmax_attention.use_fused(q, k.shape[1]):
        out = softmax_attention.fused(q, k, v, bias, mask)
      elif no_dropout and softmax_attention.use_blocked(q.shape[0], h, q.shape[1], k.shape[1]):
        out = softmax_attention.blocked(q, k, v, bias, mask)
      else:
        drop = nn.Dropout(cfg.dropout_rate)
        out = softmax_attention.dense(q, k, v, bias, mask,
                                      lambda w: drop(w, deterministic=self.deterministic))
    out = out.reshape(out.shape[:-2] + (inner,))
    return dense(d, ("joined_kv", "embed"), 1.0, name="out")(out, lora.get("out"))

  def _cached_cross_attention(self, q: Array, mask: Array) -> Array:
    """One decode step's cross-attention [n, 1, h, d] from the cached keys [r, h, d, k] and
    values [r, h, k, d] of r input rows, n = r x beams (beam search: a row's beams are
    adjacent and share one copy); `mask` [r, 1, 1, k'] covers the encoded positions (the
    cached prefix columns, first, are always visible)."""
    k = self.get_variable("cache", "cached_key")
    v = self.get_variable("cache", "cached_value")
    mask = _with_prefix_columns(mask, k.shape[-1] - mask.shape[-1])
    n, rows = q.shape[0], k.shape[0]
    q = q.reshape((rows, n // rows) + q.shape[2:])  # a row's beams as its query positions
    logits = jnp.einsum("bqhd,bhdk->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask, logits, softmax_attention.NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, v)
    return out.reshape((n, 1) + out.shape[2:])

  def _update_cache(self, k: Array, v: Array, position: Array | None):
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if not initialized:
      return k, v  # init pass on the full-length input: just shape the cache
    if k.shape[1] != 1:
      raise ValueError(f"cached decoding takes one token per step, got length {k.shape[1]}")
    index = (0, position, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, index)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, index)
    return cached_k.value, cached_v.value


def _with_prefix_columns(mask: Array, num_prefix: int) -> Array:
  """The key mask with `num_prefix` always-visible prefix columns in front."""
  return jnp.concatenate([jnp.ones(mask.shape[:-1] + (num_prefix,), bool), mask], axis=-1)


def _with_prefix(prefix, k: Array, v: Array, mask: Array, bias: Array | None):
  """Keys and values [b, k, h, d] with a key/value prefix ([b or 1, P, h, d] each) in front;
  the prefix columns are always visible and get zero relative-position bias."""
  pk, pv = prefix
  batch, num_prefix = k.shape[0], pk.shape[1]
  pk = jnp.broadcast_to(pk.astype(k.dtype), (batch,) + pk.shape[1:])
  pv = jnp.broadcast_to(pv.astype(v.dtype), (batch,) + pv.shape[1:])
  mask = _with_prefix_columns(mask, num_prefix)
  if bias is not None:
    bias = jnp.concatenate([jnp.zeros(bias.shape[:-1] + (num_prefix,), bias.dtype), bias],
                           axis=-1)
  return jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1), mask, bias


class MLP(nn.Module):
  """ReLU (v1.0) or gated-GELU (v1.1) feed-forward, with optional LoRA on its projections."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, peft: dict[str, Any] | None = None) -> Array:
    cfg = self.config
    lora = (peft or {}).get("lora", {})
    dense = functools.partial(Dense, config=cfg, init_scale=1.0)
    names = ("wi",) if len(cfg.mlp_activations) == 1 else tuple(
        f"wi_{i}" for i in range(len(cfg.mlp_activations)))
    hidden = None
    for name, act in zip(names, cfg.mlp_activations):
      y = dense(cfg.d_ff, ("embed", "mlp"), name=name)(x, lora.get(name))
      y = {"relu": jax.nn.relu, "gelu": functools.partial(jax.nn.gelu, approximate=True),
           "linear": lambda t: t}[act](y)
      hidden = y if hidden is None else hidden * y
    hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
    return dense(cfg.d_model, ("mlp", "embed"), name="wo")(hidden, lora.get("wo"))


_EMBED_AXES = ("activation_batch", "activation_length", "activation_embed")


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, bias, peft):
    cfg, det = self.config, self.deterministic
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=det)
    y = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
    y = Attention(cfg, det, name="attention")(y, y, mask, bias, peft.get("attention"))
    x = x + drop(y)
    y = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    x = x + drop(MLP(cfg, det, name="mlp")(y, peft.get("mlp")))
    return constrain(x, _EMBED_AXES), None


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, encoded, self_mask, cross_mask, bias, peft, decode_position):
    cfg, det = self.config, self.deterministic
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=det)
    y = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
    y = Attention(cfg, det, self.decode, name="self_attention")(
        y, y, self_mask, bias, peft.get("self_attention"), decode_position)
    x = x + drop(y)
    y = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
    y = Attention(cfg, det, self.decode, static_kv=True, name="encoder_decoder_attention")(
        y, encoded, cross_mask, None, peft.get("encoder_decoder_attention"))
    x = x + drop(y)
    y = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    x = x + drop(MLP(cfg, det, name="mlp")(y, peft.get("mlp")))
    return constrain(x, _EMBED_AXES), None


def remat_layer(layer_cls, policy: str, scan: bool):
  if policy == "none":
    return layer_cls
  policies = {
      "full": None,  # save nothing: recompute the whole layer
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
  }
  return nn.remat(layer_cls, policy=policies[policy], prevent_cse=not scan)


def _run_layers(module: nn.Module, layer_cls, num_layers: int, carry: Array,
                broadcast_args: tuple, peft_trees: dict, tail_args: tuple = (), **layer_kw):
  """Applies num_layers layers, as a Python loop (`layers_i` params) or nn.scan (`layers`)."""
  cfg: T5Config = module.config
  layer_cls = remat_layer(layer_cls, cfg.remat_policy, cfg.scan_layers)
  if cfg.scan_layers:
    n_bcast = len(broadcast_args)
    scanned = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * n_bcast + (0,) + (nn.broadcast,) * len(tail_args),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    carry, _ = scanned(cfg, name="layers", **layer_kw)(carry, *broadcast_args, peft_trees,
                                                        *tail_args)
    return carry
  for i in range(num_layers):
    carry, _ = layer_cls(cfg, name=f"layers_{i}", **layer_kw)(
        carry, *broadcast_args, peft_lib.layer_slice(peft_trees, i), *tail_args)
  return carry


class Encoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, peft: peft_lib.PEFT = None, enable_dropout: bool = False):
    cfg, det = self.config, not enable_dropout
    x = self.embedder(tokens).astype(_dtype(cfg.dtype))
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=det)
    x = constrain(x, _EMBED_AXES)
    positions = jnp.arange(tokens.shape[1])
    bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(positions, positions)
    mask = (tokens > 0)[:, None, None, :]
    x = _run_layers(self, EncoderLayer, cfg.num_encoder_layers, x, (mask, bias),
                    peft_lib.layer_trees(peft, "encoder"), deterministic=det)
    x = RMSNorm(cfg, name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=det)


class Decoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, encoder_tokens: Array, tokens: Array | None,
               peft: peft_lib.PEFT = None, enable_dropout: bool = False, decode: bool = False,
               embedded: Array | None = None, causal: bool = True, return_hidden: bool = False):
    """Logits [batch, len, vocab]; `embedded` replaces token embeddings (HyperT5's learned
    queries), `causal=False` lets every position see every other, and `return_hidden`
    returns the final-norm hidden states instead of logits."""
    cfg, det = self.config, not enable_dropout
    x = self.embedder(tokens) if embedded is None else embedded
    x = x.astype(_dtype(cfg.dtype))
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=det)
    x = constrain(x, _EMBED_AXES)
    relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
    position = None
    if decode and self.has_variable("cache", "position"):
      # One cached step: the query sits at `position`, keys span the whole cache.
      pos_var = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      position = pos_var.value
      max_len = self._cache_length()
      key_pos = jnp.arange(max_len)
      bias = relpos(position[None], key_pos)
      self_mask = (key_pos <= position)[None, None, None, :]
      pos_var.value = position + 1
    else:
      if decode:  # init pass: create the position counter beside the layer caches
        self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      positions = jnp.arange(x.shape[1])
      bias = relpos(positions, positions)
      self_mask = (positions[None, :] <= positions[:, None])[None, None]
      if not causal:
        self_mask = jnp.ones_like(self_mask)
    cross_mask = (encoder_tokens > 0)[:, None, None, :]
    x = _run_layers(self, DecoderLayer, cfg.num_decoder_layers, x,
                    (encoded, self_mask, cross_mask, bias), peft_lib.layer_trees(peft, "decoder"),
                    tail_args=(position,), deterministic=det, decode=decode)
    x = RMSNorm(cfg, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=det)
    if return_hidden:
      return x
    if cfg.tie_embeddings:
      x = x * (cfg.d_model ** -0.5)
      logits = self.embedder.attend(x)
    else:
      logits = Dense(cfg.vocab_size, ("embed", "vocab"), 1.0, cfg, name="logits_dense")(x)
    logits = logits.astype(jnp.float32)
    return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

  def _cache_length(self) -> int:
    layers = self.variables["cache"]
    name = "layers" if self.config.scan_layers else "layers_0"
    cached = layers[name]["self_attention"]["cached_key"]
    return cached.shape[2] if self.config.scan_layers else cached.shape[1]


class Embedder(nn.Module):
  config: T5Config

  def setup(self):
    cfg = self.config
    self.embedding = _param(self, "embedding", nn.initializers.normal(1.0),
                            (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                            _dtype(cfg.param_dtype))

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0)

  def attend(self, x: Array) -> Array:
    return tokens_matmul(x, self.embedding.astype(x.dtype).T,
                         preferred_element_type=jnp.float32)


class T5(nn.Module):
  """The encoder-decoder. `__call__` returns float32 logits [batch, target_len, vocab].

  `peft` is a `Prefix` or `LoRA` pytree (per example, or batch 1 to broadcast) or None.
  """
  config: T5Config

  def setup(self):
    self.token_embedder = Embedder(self.config)
    self.encoder = Encoder(self.config, self.token_embedder)
    self.decoder = Decoder(self.config, self.token_embedder)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               peft: peft_lib.PEFT = None, enable_dropout: bool = False,
               decode: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, peft, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, peft,
                       enable_dropout, decode)

  def encode(self, encoder_input_tokens: Array, peft: peft_lib.PEFT = None,
             enable_dropout: bool = False) -> Array:
    return self.encoder(encoder_input_tokens, peft, enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             peft: peft_lib.PEFT = None, enable_dropout: bool = False,
             decode: bool = False) -> Array:
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, peft,
                        enable_dropout, decode)


def init_params(config: T5Config, rng: Array, batch: int = 1, enc_len: int = 8,
                dec_len: int = 8) -> dict:
  """Randomly initialised parameters (boxed logical-axis metadata removed)."""
  model = T5(config)
  init = jax.jit(model.init)  # one compiled program instead of op-by-op dispatch
  variables = init(rng, jnp.ones((batch, enc_len), jnp.int32),
                   jnp.ones((batch, dec_len), jnp.int32))
  return nn.unbox(variables["params"])


def abstract_params(config: T5Config) -> Any:
  """Parameter shapes with their logical-axis metadata, without allocating anything."""
  model = T5(config)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"]
