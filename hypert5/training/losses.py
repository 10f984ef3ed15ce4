"""Token-level cross entropy for the decoder targets (t5x conventions)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Returns (sum of weighted token losses, sum of weights).

  Sums rather than means so that gradient accumulation over microbatches and data-parallel
  shards divides by the true token count once, at the end. `z_loss` adds
  z_loss * log(Z)^2 per token (t5x's logit-drift regulariser).
  """
  logits = logits.astype(jnp.float32)
  if weights is None:
    weights = (targets > 0).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  loss = log_z - target_logit + z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights)
