"""Greedy, beam-search and temperature sampling for T5, with a KV cache and PEFT applied.

All three share one step function: given the decoder input tokens so far, return the
logits at the current position. With `use_cache=True` (the default) a step feeds one token
through the cached decoder; with `use_cache=False` it re-runs the whole decoder on the
prefix, which is slow but is the reference the cache is tested against.

Outputs follow t5x: `tokens` [batch, max_length] exclude the decoder start token (0); a row
that emits EOS is padded with 0 after it.
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hypert5.models import peft as peft_lib
from hypert5.models.t5 import T5

Array = jax.Array
EOS_ID = 1
NEG_INF = -1e9


def _step_fn(model: T5, params, encoded: Array, encoder_tokens: Array, peft,
             max_length: int, use_cache: bool, beams: int = 1) -> tuple[Callable, dict]:
  """Returns (step(dec_tokens [N, L+1], i, cache) -> (logits [N, V], cache), initial cache).

  dec_tokens[:, i] is the input at step i (dec_tokens[:, 0] is the start token 0).
  `encoded`, `encoder_tokens` and `peft` have one row per input; N = rows * `beams`, each
  row's beams adjacent.
  """
  apply = functools.partial(model.apply, method=T5.decode)
  peft_n = peft_lib.repeat_batch(peft, beams) if beams > 1 else peft
  if not use_cache:
    if beams > 1:
      encoded, encoder_tokens = (jnp.repeat(x, beams, axis=0) for x in (encoded, encoder_tokens))

    def step(dec_tokens, i, cache):
      logits = apply({"params": params}, encoded, encoder_tokens, dec_tokens[:, :max_length],
                     peft_n)
      return jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), cache
    return step, {}

  # The init pass on a full-length input shapes the self-attention caches (zeros) and
  # fills the cross-attention ones with the encoded keys and values, once per row: a row's
  # beams share them (t5.Attention reads them for all of its beams at once). Its logits are
  # unused, so under jax.jit (as evaluation.Predictor calls these) XLA drops the rest of
  # that pass; called eagerly it costs one decoder forward over max_length positions.
  rows = encoded.shape[0]
  cache = apply({"params": params}, encoded, encoder_tokens,
                jnp.zeros((rows, max_length), jnp.int32), peft, decode=True,
                mutable=["cache"])[1]["cache"]
  if beams > 1:
    cache = _map_per_sequence(lambda x, axis: jnp.repeat(x, beams, axis), cache,
                              model.config.scan_layers)

  def step(dec_tokens, i, cache):
    token = jax.lax.dynamic_slice_in_dim(dec_tokens, i, 1, axis=1)
    logits, updated = apply({"params": params, "cache": cache}, encoded, encoder_tokens, token,
                            peft_n, decode=True, mutable=["cache"])
    return logits[:, 0], updated["cache"]
  return step, cache


def is_per_row(cache_path) -> bool:
  """Whether a cache entry holds one copy per input row (the cross-attention keys and
  values) rather than one per decoded sequence (self-attention, gathered by beam search)."""
  return any(getattr(p, "key", None) == "encoder_decoder_attention" for p in cache_path)


def _map_per_sequence(fn: Callable, cache, scan_layers: bool):
  """fn(x, batch_axis) on the cache entries held per decoded sequence; the per-row ones
  and the scalar position counters pass through (scanned layers put the batch on axis 1)."""
  axis = 1 if scan_layers else 0
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x if x.ndim < 4 or is_per_row(path) else fn(x, axis), cache)


def _encode(model, params, encoder_tokens, peft):
  return model.apply({"params": params}, encoder_tokens, peft, method=T5.encode)


def _pad_after_eos(tokens: Array, eos_id: int) -> Array:
  seen_eos_before = jnp.cumsum(tokens == eos_id, axis=1) - (tokens == eos_id)
  return jnp.where(seen_eos_before > 0, 0, tokens)


def greedy(model: T5, params, encoder_tokens: Array, max_length: int, peft=None,
           eos_id: int = EOS_ID, use_cache: bool = True) -> Array:
  """Argmax decoding. Returns tokens [batch, max_length]."""
  return sample(model, params, encoder_tokens, max_length, peft=peft, eos_id=eos_id,
                use_cache=use_cache, temperature=0.0)


def sample(model: T5, params, encoder_tokens: Array, max_length: int, peft=None,
           rng: Array | None = None, temperature: float = 1.0, top_k: int = 0,
           eos_id: int = EOS_ID, use_cache: bool = True) -> Array:
  """Temperature sampling (temperature 0 is greedy), optionally from the top-k tokens."""
  batch = encoder_tokens.shape[0]
  peft = peft_lib.broadcast_batch(peft, batch)
  encoded = _encode(model, params, encoder_tokens, peft)
  step, cache = _step_fn(model, params, encoded, encoder_tokens, peft, max_length, use_cache)
  if rng is None:
    rng = jax.random.key(0)

  def body(state):
    i, tokens, done, cache, rng = state
    logits, cache = step(tokens, i, cache)
    if temperature == 0.0:
      nxt = jnp.argmax(logits, axis=-1)
    else:
      rng, sub = jax.random.split(rng)
      logits = logits / temperature
      if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
      nxt = jax.random.categorical(sub, logits, axis=-1)
    nxt = jnp.where(done, 0, nxt).astype(jnp.int32)
    tokens = tokens.at[:, i + 1].set(nxt)
    return i + 1, tokens, done | (nxt == eos_id), cache, rng

  def cond(state):
    i, _, done, _, _ = state
    return (i < max_length) & ~jnp.all(done)

  tokens = jnp.zeros((batch, max_length + 1), jnp.int32)
  state = (jnp.array(0), tokens, jnp.zeros((batch,), bool), cache, rng)
  _, tokens, _, _, _ = jax.lax.while_loop(cond, body, state)
  return tokens[:, 1:]


def beam_search(model: T5, params, encoder_tokens: Array, max_length: int, peft=None,
                num_beams: int = 4, length_penalty: float = 1.0, early_stopping: bool = False,
                eos_id: int = EOS_ID, use_cache: bool = True) -> tuple[Array, Array]:
  """Beam search; a hypothesis scores sum(log p) / length**length_penalty.

  A row stops once `num_beams` hypotheses have finished (`early_stopping`, as Hugging
  Face's early_stopping=True) or once no alive beam can beat the worst finished one even at
  max_length. At max_length, unfinished beams compete with the finished ones.

  Returns (tokens [batch, max_length] of the best hypothesis, its score [batch]).
  """
  batch, k = encoder_tokens.shape[0], num_beams
  peft = peft_lib.broadcast_batch(peft, batch)
  encoded = _encode(model, params, encoder_tokens, peft)  # once per row, not per beam
  step, cache = _step_fn(model, params, encoded, encoder_tokens, peft, max_length, use_cache,
                         beams=k)

  def gather_cache(cache, flat_idx):
    return _map_per_sequence(lambda x, axis: jnp.take(x, flat_idx, axis=axis), cache,
                             model.config.scan_layers)

  def normalize(log_probs, length):
    return log_probs / (length.astype(jnp.float32) ** length_penalty)

  def body(state):
    i, alive, alive_lp, fin, fin_scores, cache = state
    logits, cache = step(alive.reshape(batch * k, -1), i, cache)
    vocab = logits.shape[-1]
    cand_lp = alive_lp[:, :, None] + jax.nn.log_softmax(logits).reshape(batch, k, vocab)
    # 2k candidates guarantee k that did not just end.
    top_lp, top_idx = jax.lax.top_k(cand_lp.reshape(batch, k * vocab), 2 * k)
    beam_idx, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive, beam_idx[:, :, None], axis=1)
    seqs = seqs.at[:, :, i + 1].set(token)
    ended = token == eos_id

    # Finished pool: keep the best k of old finished and newly ended.
    new_fin_scores = jnp.where(ended, normalize(top_lp, i + 1), NEG_INF)
    all_scores = jnp.concatenate([fin_scores, new_fin_scores], axis=1)
    all_seqs = jnp.concatenate([fin, seqs], axis=1)
    fin_scores, keep = jax.lax.top_k(all_scores, k)
    fin = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)

    # Alive pool: the best k that did not end.
    alive_cand = jnp.where(ended, NEG_INF, top_lp)
    alive_lp, keep = jax.lax.top_k(alive_cand, k)
    alive = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
    src_beam = jnp.take_along_axis(beam_idx, keep, axis=1)
    flat = (jnp.arange(batch)[:, None] * k + src_beam).reshape(-1)
    cache = gather_cache(cache, flat)
    return i + 1, alive, alive_lp, fin, fin_scores, cache

  def cond(state):
    i, _, alive_lp, _, fin_scores, _ = state
    # Stop once no alive beam can beat the worst kept finished one, even at max length.
    full = fin_scores[:, -1] > NEG_INF / 2
    if early_stopping:
      done = jnp.all(full)
    else:
      best_possible = normalize(alive_lp[:, 0], jnp.array(max_length))
      done = jnp.all(best_possible < fin_scores[:, -1])
    return (i < max_length) & ~done

  seqs = jnp.zeros((batch, k, max_length + 1), jnp.int32)
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  fin_scores = jnp.full((batch, k), NEG_INF)
  state = (jnp.array(0), seqs, alive_lp, seqs, fin_scores, cache)
  i, alive, alive_lp, fin, fin_scores, _ = jax.lax.while_loop(cond, body, state)

  # Beams still alive at max_length compete with the finished ones (an early stop leaves
  # them out: they could not win, or the row already has num_beams finished).
  reached_end = i >= max_length
  alive_scores = jnp.where(reached_end, normalize(alive_lp, jnp.array(max_length)), NEG_INF)
  scores = jnp.concatenate([fin_scores, alive_scores], axis=1)
  best = jnp.argmax(scores, axis=1)
  seqs = jnp.concatenate([fin, alive], axis=1)
  tokens = jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]
  score = jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
  return _pad_after_eos(tokens[:, 1:], eos_id), score
