"""Llama (decoder-only) in Flax Linen, with prefix and LoRA injection and KV-cache decoding.

The architecture of Hugging Face `LlamaForCausalLM`: pre-norm RMS norm, rotary position
embeddings (HF's rotate_half layout, so HF q/k weights load without a permutation; base and
"linear" / "llama3" scaling configurable), SwiGLU MLP, grouped-query attention
(num_kv_heads divides num_heads), tied or untied output embedding. The generic pieces come
from t5.py (Dense, RMSNorm, Embedder, remat policies); parameter names follow the T5X
style of t5.py (`decoder/layers_0/self_attention/query/kernel`, `mlp/wi_0` = gate,
`wi_1` = up, `wo` = down), so peft.py's `decoder_self` / `decoder_mlp` block kinds reach
them unchanged. hypert5/training/llama_io.py maps HF names to these.

Padding: right padding everywhere. A batch row is [real tokens, pads]; with causal
attention a real token never sees a pad, so training and scoring need no padding mask.
`input_mask` (HF's attention_mask) additionally hides pad keys, which only changes the
(unused) outputs at pad positions. Generation takes right-padded prompts plus their lengths
and writes each row's next token at its own cache slot (`generate`).

Positions: token i of a sequence sits at rotary position i + P, where P is the length of
an injected `Prefix` (0 without one). Prefix keys are stored *un-rotated* and rotated here
at positions 0..P-1, so a prefix is independent of whatever produced it (HyperLlama's gist
tokens, hypert5/models/gisting.py). Logits are float32 whatever the compute dtype.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hypert5.models import peft as peft_lib
from hypert5.models.configs import REMAT_POLICIES
from hypert5.models.t5 import Dense, Embedder, RMSNorm, lora_delta, remat_layer

Array = jax.Array
NEG_INF = -1e10
PREFIX_KIND = "decoder_self"

constrain = nn.with_logical_constraint
_EMBED_AXES = ("activation_batch", "activation_length", "activation_embed")
ROPE_TYPES = ("linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary frequency scaling, as transformers' `rope_parameters` "linear" and "llama3"."""

  type: str
  factor: float
  low_freq_factor: float = 1.0                    # llama3 only
  high_freq_factor: float = 4.0                   # llama3 only
  original_max_position_embeddings: int = 8192    # llama3 only

  def __post_init__(self):
    if self.type not in ROPE_TYPES:
      raise ValueError(f"RopeScaling.type={self.type!r}; supported: {ROPE_TYPES}")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """A Llama decoder. Defaults are Llama-2-7B (meta-llama/Llama-2-7b-hf)."""

  vocab_size: int = 32000
  d_model: int = 4096
  d_ff: int = 11008
  num_heads: int = 32
  num_kv_heads: int = 32          # < num_heads: grouped-query attention
  head_dim: int = 128
  num_layers: int = 32
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 4096  # recorded for export; nothing is truncated
  tie_embeddings: bool = False
  layer_norm_eps: float = 1e-5    # HF rms_norm_eps
  bos_token_id: int | None = 1    # token ids: used by export and as generation defaults
  eos_token_id: int | None = 2
  pad_token_id: int | None = None
  dtype: str = "float32"          # compute dtype (bf16 on accelerators)
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"      # one of configs.REMAT_POLICIES

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"LlamaConfig.remat_policy={self.remat_policy!r}; expected one of "
                       f"{REMAT_POLICIES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig: num_kv_heads={self.num_kv_heads} must divide "
                       f"num_heads={self.num_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim={self.head_dim} must be even (rotary pairs)")

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def kv_dim(self) -> int:
    return self.num_kv_heads * self.head_dim

  # peft.py counts layers per stack: everything is the "decoder" stack.
  @property
  def num_decoder_layers(self) -> int:
    return self.num_layers

  @property
  def num_encoder_layers(self) -> int:
    return 0

  def replace(self, **changes: Any) -> "LlamaConfig":
    return dataclasses.replace(self, **changes)


SIZES: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(vocab_size=384, d_model=64, d_ff=128, num_heads=4, num_kv_heads=2,
                        head_dim=16, num_layers=2, max_position_embeddings=2048,
                        layer_norm_eps=1e-6),
    "llama2_7b": LlamaConfig(),
}


def get_config(name: str, **overrides: Any) -> LlamaConfig:
  """The named Llama size with field overrides, e.g. get_config("llama2_7b", dtype="bfloat16")."""
  if name not in SIZES:
    raise KeyError(f"unknown Llama size {name!r}; known sizes: {sorted(SIZES)}")
  return SIZES[name].replace(**overrides)


# --------------------------------------------------------------------------- rotary


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
  """Inverse frequencies [head_dim / 2], float32, computed as transformers computes them."""
  hd = config.head_dim
  inv = (1.0 / (np.float32(config.rope_theta)
                ** (np.arange(0, hd, 2).astype(np.float32) / np.float32(hd)))).astype(np.float32)
  s = config.rope_scaling
  if s is None:
    return inv
  if s.type == "linear":
    return (inv / np.float32(s.factor)).astype(np.float32)
  # llama3: long wavelengths are divided by `factor`, short ones kept, the band between
  # interpolated (transformers' _compute_llama3_parameters).
  old = s.original_max_position_embeddings
  low_wavelen, high_wavelen = old / s.low_freq_factor, old / s.high_freq_factor
  wavelen = (2 * np.pi / inv).astype(np.float32)
  scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv).astype(np.float32)
  smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(config: LlamaConfig, positions: Array) -> tuple[Array, Array]:
  """cos, sin [..., head_dim] (float32) for integer `positions` [...] (may be negative)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: Array) -> Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """x [b, T, heads, head_dim] rotated by cos/sin [b or 1, T, head_dim]; float32 math."""
  x32 = x.astype(jnp.float32)
  out = x32 * cos[:, :, None] + rotate_half(x32) * sin[:, :, None]
  return out.astype(x.dtype)


# --------------------------------------------------------------------------- layers


def _project(cfg: LlamaConfig, name: str, features: int, axes, x: Array,
             lora: dict, gate: Array | None) -> Array:
  """Dense `name` plus its LoRA delta; `gate` [b, T, 1] switches LoRA per token (one-pass
  gisting runs the hyper and downstream streams in one sequence)."""
  pair = lora.get(name)
  y = Dense(features, axes, 1.0, cfg, name=name)(x, pair if gate is None else None)
  if pair is not None and gate is not None:
    xd = x.astype(jnp.dtype(cfg.dtype))
    y = y + gate.astype(y.dtype) * lora_delta(xd, pair)
  return y


class Attention(nn.Module):
  """Grouped-query self-attention with rotary embeddings, a key/value prefix and a cache.

  Returns (output, (k, v)) where k are this call's keys *before* rotation (what gisting
  keeps as the prefix). With `decode=True` the first call (at init, full length) creates
  zero `cached_key` / `cached_value` [b, max_len, kv_heads, head_dim] (rotated keys); later
  calls write their tokens at per-row cache `slots` [b, T] and attend to slots <= their own.
  """
  config: LlamaConfig
  decode: bool = False
  kv_range: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, x, cos, sin, mask, peft, lora_gate=None, slots=None, prefix_rope=None):
    cfg = self.config
    peft = peft or {}
    lora = peft.get("lora", {})
    b, t = x.shape[:2]
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    proj = functools.partial(_project, cfg, lora=lora, gate=lora_gate)
    q = proj("query", cfg.inner_dim, ("embed", "joined_kv"), x).reshape(b, t, h, hd)
    k = proj("key", cfg.kv_dim, ("embed", "joined_kv"), x).reshape(b, t, kvh, hd)
    v = proj("value", cfg.kv_dim, ("embed", "joined_kv"), x).reshape(b, t, kvh, hd)
    if "gist_kv" in peft:  # one-pass gisting with the gist keys / values fixed from outside
      start, end = self.kv_range
      fixed_k, fixed_v = peft["gist_kv"]
      k = k.at[:, start:end].set(fixed_k.astype(k.dtype))
      v = v.at[:, start:end].set(fixed_v.astype(v.dtype))
    raw_kv = (k, v)
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q = constrain(apply_rope(q, cos, sin), heads)
    k = constrain(apply_rope(k, cos, sin), heads)

    if self.decode:
      k, v, cache_mask = self._update_cache(k, v, slots)
      if cache_mask is not None:
        mask = cache_mask

    if "prefix" in peft:
      pk, pv = peft["prefix"]  # [b or 1, P, kv_heads, head_dim], keys un-rotated
      pcos, psin = prefix_rope
      pk = apply_rope(pk.astype(k.dtype), pcos, psin)
      pk = jnp.broadcast_to(pk, (b,) + pk.shape[1:])
      pv = jnp.broadcast_to(pv.astype(v.dtype), (b,) + pv.shape[1:])
      k = jnp.concatenate([pk, k], axis=1)
      v = jnp.concatenate([pv, v], axis=1)
      # Prefix columns are always visible.
      mask = jnp.concatenate(
          [jnp.ones(mask.shape[:-1] + (pk.shape[1],), bool), mask], axis=-1)

    q = q.reshape(b, t, kvh, h // kvh, hd)  # query heads grouped by their kv head
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * (hd ** -0.5)
    logits = jnp.where(mask[:, :, None], logits, NEG_INF)  # mask [b, 1, t, s]
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, cfg.inner_dim)
    out = proj("out", cfg.d_model, ("joined_kv", "embed"), out)
    return out, raw_kv

  def _update_cache(self, k, v, slots):
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if not initialized:
      return k, v, None  # init pass on the full-length input: just shape the cache
    rows = jnp.arange(k.shape[0])[:, None]
    cached_k.value = cached_k.value.at[rows, slots].set(k, mode="drop")
    cached_v.value = cached_v.value.at[rows, slots].set(v, mode="drop")
    key_slots = jnp.arange(cached_k.value.shape[1])
    mask = (key_slots[None, None, :] <= slots[:, :, None])[:, None]  # causal over slots
    return cached_k.value, cached_v.value, mask


class MLP(nn.Module):
  """SwiGLU: wo(silu(wi_0 x) * wi_1 x), i.e. down(silu(gate x) * up x)."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, peft=None, lora_gate=None):
    cfg = self.config
    proj = functools.partial(_project, cfg, lora=(peft or {}).get("lora", {}), gate=lora_gate)
    hidden = jax.nn.silu(proj("wi_0", cfg.d_ff, ("embed", "mlp"), x))
    hidden = hidden * proj("wi_1", cfg.d_ff, ("embed", "mlp"), x)
    hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
    return proj("wo", cfg.d_model, ("mlp", "embed"), hidden)


class Layer(nn.Module):
  """One pre-norm block. Returns (x, (k, v)[:, kv_range] or None)."""
  config: LlamaConfig
  decode: bool = False
  kv_range: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, x, cos, sin, mask, prefix_rope, lora_gate, peft, slots):
    cfg = self.config
    y = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
    y, (k, v) = Attention(cfg, self.decode, self.kv_range, name="self_attention")(
        y, cos, sin, mask, peft.get("self_attention"), lora_gate, slots, prefix_rope)
    x = x + y
    y = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    x = x + MLP(cfg, name="mlp")(y, peft.get("mlp"), lora_gate)
    kv = None
    if self.kv_range is not None:
      start, end = self.kv_range
      kv = (k[:, start:end], v[:, start:end])
    return constrain(x, _EMBED_AXES), kv


def _run_layers(module: nn.Module, carry: Array, broadcast_args: tuple, peft_trees: dict,
                slots, **layer_kw):
  """t5._run_layers, but keeping each layer's second output (stacked on a leading layer
  axis): a Python loop (`layers_i` params) or nn.scan (`layers`)."""
  cfg: LlamaConfig = module.config
  layer_cls = remat_layer(Layer, cfg.remat_policy, cfg.scan_layers)
  if cfg.scan_layers:
    scanned = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * len(broadcast_args) + (0, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(cfg, name="layers", **layer_kw)(carry, *broadcast_args, peft_trees, slots)
  outs = []
  for i in range(cfg.num_layers):
    carry, out = layer_cls(cfg, name=f"layers_{i}", **layer_kw)(
        carry, *broadcast_args, peft_lib.layer_slice(peft_trees, i), slots)
    outs.append(out)
  stacked = None if outs[0] is None else jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  return carry, stacked


class Decoder(nn.Module):
  """The layer stack, final norm and output projection over already-embedded inputs."""
  config: LlamaConfig
  embedder: nn.Module

  @nn.compact
  def __call__(self, x, positions, mask, peft=None, lora_gate=None, decode=False, slots=None,
               kv_range=None, return_hidden=False, logits_from=0, gist_kv=None):
    """x [b, T, d]; positions [b, T] rotary positions; mask [b, 1, T, T] (ignored by cached
    steps); peft a Prefix / LoRA (or None); lora_gate [b or 1, T, 1] or None; gist_kv a
    Prefix whose un-rotated keys / values replace those computed at kv_range.
    Returns (logits float32 [b, T - logits_from, V] or the final-norm hidden states [b, T, d],
    kv) where kv are the un-rotated (keys, values) [layers, b, len(kv_range), kv_heads,
    head_dim], or None without kv_range."""
    cfg = self.config
    x = constrain(x.astype(jnp.dtype(cfg.dtype)), _EMBED_AXES)
    cos, sin = rope_tables(cfg, positions)
    prefix_rope = None
    if isinstance(peft, peft_lib.Prefix):
      prefix_rope = rope_tables(cfg, jnp.arange(peft.length)[None])
    trees = peft_lib.layer_trees(peft, "decoder")
    if gist_kv is not None:
      fixed = peft_lib.layer_trees(gist_kv, "decoder")["self_attention"]["prefix"]
      trees = {**trees, "self_attention": {**trees.get("self_attention", {}), "gist_kv": fixed}}
    x, kv = _run_layers(self, x, (cos, sin, mask, prefix_rope, lora_gate), trees, slots,
                        decode=decode, kv_range=kv_range)
    x = RMSNorm(cfg, name="decoder_norm")(x)
    if return_hidden:
      return x, kv
    x = x[:, logits_from:]
    if cfg.tie_embeddings:
      logits = self.embedder.attend(x)
    else:
      logits = Dense(cfg.vocab_size, ("embed", "vocab"), 1.0, cfg, name="logits_dense")(x)
    logits = constrain(logits.astype(jnp.float32),
                       ("activation_batch", "activation_length", "activation_vocab"))
    return logits, kv


def causal_mask(length: int) -> Array:
  pos = jnp.arange(length)
  return (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, T]


def prefix_length(peft) -> int:
  return peft.length if isinstance(peft, peft_lib.Prefix) else 0


class Llama(nn.Module):
  """The decoder-only LM. `__call__` returns float32 logits [batch, len, vocab].

  `peft` is a Prefix (kind "decoder_self", leaves [batch or 1, layers, P, kv_heads,
  head_dim], keys un-rotated) or a LoRA (kinds "decoder_self" q/k/v/o, "decoder_mlp"
  wi_0/wi_1/wo), or None.
  """
  config: LlamaConfig

  def setup(self):
    self.token_embedder = Embedder(self.config)
    self.decoder = Decoder(self.config, self.token_embedder)

  def __call__(self, tokens: Array, peft: peft_lib.PEFT = None,
               input_mask: Array | None = None) -> Array:
    """tokens [b, T] (right-padded); input_mask [b, T] hides pad keys (HF attention_mask)."""
    t = tokens.shape[1]
    positions = jnp.arange(t)[None] + prefix_length(peft)
    mask = causal_mask(t)
    if input_mask is not None:
      mask = mask & input_mask.astype(bool)[:, None, None, :]
    logits, _ = self.decoder(self.embed(tokens), positions, mask, peft)
    return logits

  def embed(self, tokens: Array) -> Array:
    return self.token_embedder(tokens)

  def decode_step(self, tokens: Array, slots: Array, peft: peft_lib.PEFT = None) -> Array:
    """Cached forward of tokens [b, T] written at cache slots [b, T] (needs decode=True
    and mutable=["cache"]); position = slot + prefix length. Logits [b, T, V]."""
    positions = slots + prefix_length(peft)
    mask = causal_mask(tokens.shape[1])  # used only by the init pass
    logits, _ = self.decoder(self.embed(tokens), positions, mask, peft, decode=True,
                             slots=slots)
    return logits

  def stream(self, x: Array, positions: Array, mask: Array, peft: peft_lib.PEFT = None,
             lora_gate: Array | None = None, kv_range: tuple[int, int] | None = None,
             logits_from: int | None = None, gist_kv: peft_lib.Prefix | None = None):
    """Embedded inputs x [b, T, d] with explicit rotary positions [b, T] and mask
    [b, 1, T, T] (gisting). Returns (logits of positions logits_from.. or, with
    logits_from=None, no logits; un-rotated kv [layers, b, len(kv_range), kv_heads, hd])."""
    out, kv = self.decoder(x, positions, mask, peft, lora_gate, kv_range=kv_range,
                           return_hidden=logits_from is None, logits_from=logits_from or 0,
                           gist_kv=gist_kv)
    return (None if logits_from is None else out), kv


def init_params(config: LlamaConfig, rng: Array, length: int = 8) -> dict:
  """Randomly initialised parameters (logical-axis boxes removed)."""
  return _init_params(config, rng, length)


@functools.partial(jax.jit, static_argnums=(0, 2))  # compiled once per config, not per call
def _init_params(config: LlamaConfig, rng: Array, length: int) -> dict:
  return nn.unbox(Llama(config).init(rng, jnp.ones((1, length), jnp.int32))["params"])


def abstract_params(config: LlamaConfig) -> Any:
  """Parameter shapes with their logical-axis metadata, allocating nothing."""
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.eval_shape(Llama(config).init, jax.random.key(0), tokens)["params"]


# --------------------------------------------------------------------------- generation


def init_cache(config: LlamaConfig, params, batch: int, max_len: int, peft=None) -> dict:
  """A zero KV cache for `batch` rows of up to `max_len` tokens (prefix not counted)."""
  model = Llama(config)
  tokens = jnp.zeros((batch, max_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.apply(
      {"params": params}, tokens, jnp.zeros_like(tokens), peft, method=Llama.decode_step,
      mutable=["cache"])[1]["cache"])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def generate(config: LlamaConfig, params, prompt: Array, prompt_lengths: Array,
             max_new_tokens: int, peft: peft_lib.PEFT = None, *, eos_id: int | None = None,
             temperature: float = 0.0, top_k: int = 0, rng: Array | None = None,
             use_cache: bool = True) -> Array:
  """Greedy (temperature 0) or temperature / top-k sampling after right-padded prompts.

  prompt [b, P] with prompt_lengths [b] >= 1 real tokens per row; the new token t of row i
  goes to sequence index prompt_lengths[i] + t. With use_cache=False every step re-runs the
  whole sequence (the reference the cache is tested against). Returns [b, max_new_tokens];
  after a row's eos (default config.eos_token_id) it holds 0. Compiled once per config,
  shapes and decoding settings.
  """
  eos_id = config.eos_token_id if eos_id is None else eos_id
  rng = jax.random.key(0) if rng is None else rng
  return _generate(config, params, jnp.asarray(prompt, jnp.int32),
                   jnp.asarray(prompt_lengths, jnp.int32), peft, rng, max_new_tokens, eos_id,
                   temperature, top_k, use_cache)


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8, 9, 10))
def _generate(config, params, prompt, lengths, peft, rng, max_new_tokens, eos_id, temperature,
              top_k, use_cache):
  model = Llama(config)
  b, p = prompt.shape
  total = p + max_new_tokens
  rows = jnp.arange(b)
  buf = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)

  if use_cache:
    cache = init_cache(config, params, b, total, peft)
    logits, upd = model.apply({"params": params, "cache": cache}, prompt,
                              jnp.broadcast_to(jnp.arange(p), (b, p)), peft,
                              method=Llama.decode_step, mutable=["cache"])
    cache = upd["cache"]
    last = logits[rows, lengths - 1]

    def advance(buf, cur, cache):  # logits at slot cur (the token just written there)
      out, upd = model.apply({"params": params, "cache": cache}, buf[rows, cur][:, None],
                             cur[:, None], peft, method=Llama.decode_step, mutable=["cache"])
      return out[:, 0], upd["cache"]
  else:
    cache = {}
    last = model.apply({"params": params}, buf, peft)[rows, lengths - 1]

    def advance(buf, cur, cache):
      return model.apply({"params": params}, buf, peft)[rows, cur], cache

  def pick(logits, rng):
    if temperature == 0.0:
      return jnp.argmax(logits, axis=-1), rng
    rng, sub = jax.random.split(rng)
    logits = logits / temperature
    if top_k:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -1e9, logits)
    return jax.random.categorical(sub, logits, axis=-1), rng

  def body(state):
    t, buf, out, done, last, cache, rng = state
    nxt, rng = pick(last, rng)
    nxt = jnp.where(done, 0, nxt).astype(jnp.int32)
    cur = lengths + t
    buf = buf.at[rows, cur].set(nxt)
    out = out.at[:, t].set(nxt)
    done = done | (nxt == eos_id)
    last, cache = advance(buf, cur, cache)
    return t + 1, buf, out, done, last, cache, rng

  def cond(state):
    t, _, _, done, _, _, _ = state
    return (t < max_new_tokens) & ~jnp.all(done)

  out = jnp.zeros((b, max_new_tokens), jnp.int32)
  state = (jnp.array(0), buf, out, jnp.zeros((b,), bool), last, cache, rng)
  return jax.lax.while_loop(cond, body, state)[2]
