"""Softmax attention, dense or one example at a time with a backward pass that recomputes scores.

Dense attention materialises [batch, heads, q, k] scores, probabilities and their gradients;
at T5-small × 512 tokens that is ~50 MB per tensor, so on a CPU every softmax pass streams
from memory. Here the forward and the backward both loop over examples (`lax.map`): one
example's [heads, q, k] block stays in cache, and the backward recomputes it from q and k
instead of storing it (as flash attention does). Measured on 2 CPU cores, batch 8 × 512,
6 heads × 64, forward + backward: 0.138 s against 0.197 s for the dense form.
Numerically the same function as `dense` (float32 sums in a different order).

Used by `t5.Attention` on CPU when no dropout applies and no device mesh splits the batch
(`use_blocked`). On NVIDIA GPUs in bf16/fp16 without dropout, `fused` runs cuDNN's flash
attention instead (`use_fused`); elsewhere the dense form, which XLA fuses well.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e10  # logit of a masked key


def dense(q: Array, k: Array, v: Array, bias: Array | None, mask: Array,
          dropout: Callable[[Array], Array] = lambda w: w) -> Array:
  """q [b, q, h, d], k/v [b, k, h, d], bias [1 or b, h, q, k] or None, mask broadcastable
  to [b, h, q, k] -> [b, q, h, d]; `dropout` applies to the attention weights."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask, logits, NEG_INF)
  weights = dropout(jax.nn.softmax(logits, axis=-1).astype(v.dtype))
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def use_fused(q: Array, k_len: int) -> bool:
  """cuDNN's fused attention applies: an NVIDIA GPU of compute capability 8.0 or later (its
  flash kernels' floor), no mesh of several devices (not yet tried: cuDNN's partitioner
  takes only some shardings), and shapes it takes."""
  device = jax.devices()[0]
  on_cuda = (jax.default_backend() == "gpu" and "cuda" in device.client.platform_version
             and tuple(map(int, device.compute_capability.split("."))) >= (8, 0))
  return on_cuda and _one_device_mesh() and fused_supports(q, k_len)


def fused_supports(q: Array, k_len: int) -> bool:
  """16-bit inputs, a head size that is a multiple of 8 up to 128, and even query and key
  lengths (cuDNN's kernels with a bias need them: decode steps of one query stay dense)."""
  q_len, head_dim = q.shape[1], q.shape[-1]
  return (q.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
          and q_len % 2 == 0 and k_len % 2 == 0)


def fused(q: Array, k: Array, v: Array, bias: Array | None, mask: Array,
          implementation: str | None = "cudnn") -> Array:
  """`dense` without dropout as cuDNN's flash attention: the probabilities are neither
  stored for the backward nor written out; it recomputes them. cuDNN takes the mask folded
  into the bias, in the inputs' dtype (the position bias is rounded to bf16): with a
  padding mask that is a [b, h, q, k] tensor per call, and its gradient another. On an
  H100, T5-Large shapes (32 x 512 tokens, 16 heads of 64, a shared bias and a padding
  mask), forward + backward took 1.9 against 3.3 ms dense (1.1 ms with the padding given
  as key lengths instead, which needs right-padded rows). `implementation="xla"` is the
  same call through XLA (tests)."""
  if bias is not None:
    bias = bias.astype(q.dtype)
  # cuDNN needs the folded bias's last two axes full-sized.
  mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
  # A query that sees no key (every query of an all-padding example) gets `dense`'s result,
  # the mean of the values, and the kernel sees it with every key visible. Masked as it
  # is, cuDNN's gradients there were far off on an H100 (a norm 30x that of the other
  # rows' gradients); the dense gradients for q and k are zero.
  sees_a_key = jnp.any(mask, axis=-1, keepdims=True)  # [b, 1|h, q, 1]
  out = jax.nn.dot_product_attention(q, k, v, bias, mask | ~sees_a_key, scale=1.0,
                                     implementation=implementation)
  return jnp.where(sees_a_key.transpose(0, 2, 1, 3), out,
                   jnp.mean(v, axis=1, keepdims=True).astype(out.dtype))


# Dense scores smaller than this (float32 elements; 8 MiB) stay in a CPU's last-level cache
# and the dense form is faster. Measured on 2 cores with a 32 MiB L3: T5-small 4 x 256
# tokens (6 MiB of scores) 5% slower blocked; the demo's hypermodel, 32 x 133 tokens
# (9 MiB) 23% faster; T5-small 8 x 512 (48 MiB) 11% faster.
MIN_SCORES = 2**21


def use_blocked(batch: int, heads: int, q_len: int, k_len: int) -> bool:
  """On CPU when the dense scores would spill out of cache, unless a mesh of several devices
  is active (a per-example loop over a sharded batch would gather it)."""
  if jax.default_backend() != "cpu" or batch * heads * q_len * k_len < MIN_SCORES:
    return False
  return _one_device_mesh()


def _one_device_mesh() -> bool:
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or mesh.size == 1


def _probs(q, k, bias, mask):
  """One example: q [q, h, d], k [k, h, d], bias [h, q, k] or None, mask [1, 1|q, k]."""
  s = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + bias
  return jax.nn.softmax(jnp.where(mask, s, NEG_INF), axis=-1)


def _example(bias, mask, batch):
  """(bias of example i, mask of example i) for a bias and mask of batch 1 or `batch`."""
  mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
  if bias is None:
    return lambda i: None, lambda i: mask[i]
  return (lambda i: bias[0]) if bias.shape[0] == 1 else (lambda i: bias[i]), lambda i: mask[i]


@jax.custom_vjp
def blocked(q: Array, k: Array, v: Array, bias: Array | None, mask: Array) -> Array:
  """`dense` without dropout, one example at a time."""
  return _forward(q, k, v, bias, mask)


def _forward(q, k, v, bias, mask):
  bias_of, mask_of = _example(bias, mask, q.shape[0])

  def one(i):
    p = _probs(q[i], k[i], bias_of(i), mask_of(i)).astype(v.dtype)
    return jnp.einsum("hqk,khd->qhd", p, v[i])
  return jax.lax.map(one, jnp.arange(q.shape[0]))


def _fwd(q, k, v, bias, mask):
  # symbolic_zeros: arguments arrive as CustomVJPPrimal. A frozen model's position bias is
  # not perturbed, so its gradient (a [heads, q, k] sum per example) is skipped.
  d_bias_wanted = bias is not None and bias.perturbed
  q, k, v, mask = q.value, k.value, v.value, mask.value
  bias = None if bias is None else bias.value
  out = _forward(q, k, v, bias, mask)
  return out, (q, k, v, bias, mask, out, jnp.zeros(()) if d_bias_wanted else None)


def _bwd(res, d_out):
  q, k, v, bias, mask, out, d_bias_wanted = res
  if isinstance(d_out, jax.custom_derivatives.SymbolicZero):
    d_out = jnp.zeros(out.shape, out.dtype)
  batch = q.shape[0]
  bias_of, mask_of = _example(bias, mask, batch)
  shared_bias = bias is not None and bias.shape[0] == 1
  f32 = lambda x: x.astype(jnp.float32)

  def one(d_bias_sum, i):
    p = _probs(q[i], k[i], bias_of(i), mask_of(i))  # recomputed, not stored
    do = f32(d_out[i])
    dv = jnp.einsum("hqk,qhd->khd", p, do)
    dp = jnp.einsum("qhd,khd->hqk", do, f32(v[i]))
    delta = jnp.einsum("qhd,qhd->hq", do, f32(out[i]))[..., None]
    # d(scores); masked scores get none (where p is not 0: a row with every key masked).
    ds = jnp.where(mask_of(i), p * (dp - delta), 0.0)
    dq = jnp.einsum("hqk,khd->qhd", ds, f32(k[i]))
    dk = jnp.einsum("hqk,qhd->khd", ds, f32(q[i]))
    if d_bias_wanted is None:
      return d_bias_sum, (dq, dk, dv, None)
    if shared_bias:  # one bias for the batch: its gradient sums over examples
      return d_bias_sum + ds, (dq, dk, dv, None)
    return d_bias_sum, (dq, dk, dv, ds)

  init = jnp.zeros(bias.shape[1:] if d_bias_wanted is not None and shared_bias else ())
  d_bias_sum, (dq, dk, dv, d_bias_each) = jax.lax.scan(one, init, jnp.arange(batch))
  d_bias = None
  if d_bias_wanted is not None:
    d_bias = (d_bias_sum[None] if shared_bias else d_bias_each).astype(bias.dtype)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), d_bias, None


blocked.defvjp(_fwd, _bwd, symbolic_zeros=True)
