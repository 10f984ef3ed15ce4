"""Analytic FLOP counts and device peaks, for tokens/s -> TFLOP/s -> MFU.

Counts are matmul FLOPs (2 per multiply-add), the convention behind MFU: projections,
attention scores and mixing, MLP and the output layer. The frozen downstream model costs a
forward pass plus the activation gradients that flow through it (about one more forward:
no weight gradients); a trained model costs forward + backward (three forwards).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from hypert5.models.configs import T5Config

# Dense bf16 peaks from datasheets (FLOP/s per device).
_PEAKS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def _layer_stack_flops(cfg: T5Config, q_len: int, kv_len: int, cross_len: int | None) -> float:
  d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
  mlp = 2 * q_len * d * ff * (len(cfg.mlp_activations) + 1)
  attn = 2 * q_len * d * inner * 4 + 2 * 2 * q_len * kv_len * inner
  if cross_len is not None:  # cross-attention: q/o on queries, k/v on encoder outputs
    attn += 2 * q_len * d * inner * 2 + 2 * cross_len * d * inner * 2
    attn += 2 * 2 * q_len * cross_len * inner
  return mlp + attn


def t5_forward_flops(cfg: T5Config, enc_len: int, dec_len: int, prefix_len: int = 0,
                     logits: bool = True) -> float:
  """FLOPs of one forward pass for one example."""
  enc = cfg.num_encoder_layers * _layer_stack_flops(cfg, enc_len, enc_len + prefix_len, None)
  dec = cfg.num_decoder_layers * _layer_stack_flops(cfg, dec_len, dec_len + prefix_len,
                                                    enc_len + prefix_len)
  out = 2 * dec_len * cfg.d_model * cfg.vocab_size if logits else 0
  return float(enc + dec + out)


def step_flops(mode: str, cfg: T5Config, batch: int, enc_len: int, dec_len: int,
               hyper_len: int = 0, num_queries: int = 0, prefix_len: int = 0,
               hyper_body: T5Config | None = None, queries_per_row: int = 1) -> float:
  """Training-step FLOPs for a batch under a training mode (see training/modes.py);
  `hyper_body`: the hypermodel's architecture when it differs from `cfg`;
  `queries_per_row`: downstream queries per row (hyper rows of several queries share one
  hypermodel forward)."""
  down = queries_per_row * t5_forward_flops(cfg, enc_len, dec_len, prefix_len)
  if mode == "full":
    return 3 * batch * down
  if mode == "peft_friendly":  # full's cost (description rows read it as text or as
    # generated parameters: about the same), plus a reader HyperT5 over half the batch's
    # descriptions (hyper_len tokens, num_queries queries), forward + backward
    return 3 * batch * down + 3 * (batch // 2) * t5_forward_flops(
        cfg, hyper_len, num_queries, logits=False)
  total = 2 * batch * down  # frozen: forward + activation gradients
  if mode == "hyper":
    total += 3 * batch * t5_forward_flops(hyper_body or cfg, hyper_len, num_queries,
                                          logits=False)
  return total


def device_peak_flops(device: jax.Device | None = None) -> tuple[float, str]:
  """(peak FLOP/s, how it was obtained): datasheet bf16 for accelerators, measured on CPU."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  if device.platform != "cpu":
    for name, peak in _PEAKS.items():
      if name.lower() in kind.lower():
        return peak, f"datasheet bf16 ({kind})"
    return 0.0, f"unknown peak for {kind!r}"
  return measured_cpu_peak(), "measured fp32 matmul on CPU"


@functools.lru_cache(maxsize=1)
def measured_cpu_peak(n: int = 1024, repeats: int = 5) -> float:
  """Achievable fp32 matmul FLOP/s of the host, for an honest CPU MFU."""
  x = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


# -- decoder-only (Llama) ----------------------------------------------------------------


def llama_forward_flops(cfg, length: int, prefix_len: int = 0, logits: bool = True) -> float:
  """FLOPs of one Llama forward pass over `length` tokens of one example (`cfg` a
  models.llama.LlamaConfig): q/k/v/o projections (k, v at the kv-head width), attention
  over prefix + tokens, the SwiGLU MLP's three matmuls, and the output layer."""
  d, inner, kv, ff = cfg.d_model, cfg.inner_dim, cfg.kv_dim, cfg.d_ff
  proj = 2 * length * d * (2 * inner + 2 * kv)
  attn = 2 * 2 * length * (length + prefix_len) * inner
  mlp = 2 * length * d * ff * 3
  out = 2 * length * d * cfg.vocab_size if logits else 0
  return float(cfg.num_layers * (proj + attn + mlp) + out)


def decoder_step_flops(mode: str, cfg, batch: int, length: int, hyper_len: int = 0,
                       num_gist: int = 0) -> float:
  """Training-step FLOPs of a modes.DecoderObjective: `full` trains the Llama (three
  forwards); every other mode runs the frozen Llama forward plus activation gradients (two),
  and `hyper` adds the hyper stream over few-shot + gist tokens, also frozen weights with
  only LoRA and gist gradients (two; the LoRA matmuls are not counted)."""
  if mode == "full":
    return 3 * batch * llama_forward_flops(cfg, length)
  prefix = num_gist if mode in ("hyper", "prefix") else 0
  total = 2 * batch * llama_forward_flops(cfg, length, prefix)
  if mode == "hyper":
    total += 2 * batch * llama_forward_flops(cfg, hyper_len + num_gist, logits=False)
  return total
