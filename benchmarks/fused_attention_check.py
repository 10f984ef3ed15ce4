"""On an NVIDIA GPU: cuDNN's fused attention (`softmax_attention.fused`) against the dense
form in float32 on the same bf16 inputs, values and gradients, for the shapes T5 gives it
(encoder with padding and a shared position bias, causal decoder with a 32-column prefix,
cross-attention, padding rows that see no key); then forward + backward times of fused and
dense at T5-Large encoder shapes. Exits 1 if a relative error exceeds 2e-2 (bf16 rounding
gives about 5e-3). `benchmarks/device_bench.sh` runs it first.

  python benchmarks/fused_attention_check.py
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hypert5.models import softmax_attention as sa  # noqa: E402

TOLERANCE = 2e-2
H, D = 16, 64  # T5-Large heads
rng = np.random.default_rng(0)


def _normal(shape, dtype=jnp.bfloat16):
  return jnp.asarray(rng.normal(size=shape), dtype)


def _fwd_bwd(attention, q, k, v, bias, mask, g):
  """Value and gradients of sum(attention(...) * g) with respect to q, k, v and the bias."""
  loss = lambda q, k, v, bias, mask, g: jnp.sum(attention(q, k, v, bias, mask).astype(
      jnp.float32) * g)
  fn = jax.jit(jax.value_and_grad(loss, tuple(range(3 if bias is None else 4))))
  return lambda: fn(q, k, v, bias, mask, g)  # arguments, not constants XLA would fold


def check(name, batch, q_len, k_len, bias, mask) -> bool:
  q, k, v = _normal((batch, q_len, H, D)), _normal((batch, k_len, H, D)), _normal((batch, k_len, H, D))
  g = _normal((batch, q_len, H, D), jnp.float32)
  f32 = lambda q, k, v, *rest: sa.dense(q.astype(jnp.float32), k.astype(jnp.float32),
                                        v.astype(jnp.float32), *rest)
  (y, grads), (y_ref, grads_ref) = (_fwd_bwd(f, q, k, v, bias, mask, g)()
                                    for f in (sa.fused, f32))
  out_err = float(jnp.linalg.norm(sa.fused(q, k, v, bias, mask).astype(jnp.float32)
                                  - f32(q, k, v, bias, mask)) / jnp.linalg.norm(f32(q, k, v, bias, mask)))
  errs = [float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))
          for a, b in zip(grads, grads_ref)]
  ok = bool(np.all(np.array([out_err, *errs]) < TOLERANCE)) and np.isfinite(float(y))  # NaN fails
  print(f"{name:26s} output {out_err:.1e}  grads (q, k, v[, bias]) "
        f"{', '.join(f'{e:.1e}' for e in errs)}  {'ok' if ok else 'FAIL'}")
  return ok


def timing(batch=32, length=512, repeats=10):
  q, k, v = (_normal((batch, length, H, D)) for _ in range(3))
  bias, g = _normal((1, H, length, length), jnp.float32), _normal((batch, length, H, D), jnp.float32)
  mask = jnp.ones((batch, 1, 1, length), bool)
  for name, f in (("fused", sa.fused), ("dense", sa.dense)):
    fn = _fwd_bwd(f, q, k, v, bias, mask, g)
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
    print(f"{name}: {np.median(times) * 1e3:.2f} ms forward + backward, {batch} x {length} "
          f"tokens, {H} heads of {D}, shared bias, padding mask")


def main() -> int:
  q = jnp.zeros((1, 512, H, D), jnp.bfloat16)
  if not sa.use_fused(q, 512):
    print("fused attention does not apply here (it needs an NVIDIA GPU); nothing checked")
    return 0
  b = 8
  pad = jnp.asarray(np.arange(512)[None] < rng.integers(200, 513, b)[:, None])[:, None, None]
  causal = jnp.concatenate([jnp.ones((128, 32), bool), jnp.tril(jnp.ones((128, 128), bool))],
                           axis=1)[None, None]
  ok = all([
      check("encoder", b, 512, 512, _normal((1, H, 512, 512), jnp.float32), pad),
      check("decoder self + prefix 32", b, 128, 160, _normal((1, H, 128, 160), jnp.float32), causal),
      check("cross", b, 128, 512, None, pad),
      check("rows that see no key", b, 128, 512, None, pad.at[1].set(False)),
  ])
  timing()
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
