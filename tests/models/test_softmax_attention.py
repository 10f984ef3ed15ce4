"""The blocked (per-example, recomputing) attention equals the dense one, values and grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypert5.models import configs, peft as peft_lib, softmax_attention as sa, t5
from hypert5.training import partitioning

B, Q, K, H, D = 3, 7, 9, 2, 4


def _qkv(seed=0):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=s), jnp.float32)
               for s in [(B, Q, H, D), (B, K, H, D), (B, K, H, D)])


MASKS = {
    "padding": jnp.asarray(np.random.default_rng(1).random((B, 1, 1, K)) > 0.3),
    "causal": jnp.tril(jnp.ones((Q, K), bool), 2)[None, None],
    "empty example": jnp.ones((B, 1, 1, K), bool).at[1].set(False),
}
BIASES = {"none": None, "shared": (1, H, Q, K), "per example": (B, H, Q, K)}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("bias", BIASES)
def test_blocked_equals_dense(mask, bias):
  q, k, v = _qkv()
  mask = MASKS[mask]
  shape = BIASES[bias]
  b = None if shape is None else jnp.asarray(np.random.default_rng(2).normal(size=shape),
                                             jnp.float32)
  np.testing.assert_allclose(sa.blocked(q, k, v, b, mask), sa.dense(q, k, v, b, mask),
                             atol=1e-6)
  # A non-linear loss, so that every input's gradient depends on the attention weights.
  argnums = (0, 1, 2) if b is None else (0, 1, 2, 3)
  grads = {f: jax.grad(lambda *a: jnp.sum(f(*a, mask) ** 3), argnums)(q, k, v, b)
           for f in (sa.blocked, sa.dense)}
  for got, want in zip(grads[sa.blocked], grads[sa.dense]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_blocked_skips_a_frozen_bias_and_jits():
  q, k, v = _qkv()
  bias = jnp.ones((1, H, Q, K))
  f = jax.jit(jax.grad(lambda q: jnp.sum(sa.blocked(q, k, v, bias, MASKS["padding"]) ** 2)))
  want = jax.grad(lambda q: jnp.sum(sa.dense(q, k, v, bias, MASKS["padding"]) ** 2))(q)
  np.testing.assert_allclose(f(q), want, rtol=1e-4, atol=1e-5)


def test_use_blocked_needs_large_scores_on_one_device():
  big = (1, 1, 1024, 2048)  # 2**21 scores
  assert sa.use_blocked(*big) == (jax.default_backend() == "cpu")
  assert not sa.use_blocked(1, 1, 1024, 2047)
  if jax.device_count() > 1:  # a mesh that splits the batch keeps the dense form
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=jax.device_count()))
    with jax.set_mesh(mesh):
      assert not sa.use_blocked(*big)


def test_t5_with_blocked_attention_matches_dense(monkeypatch):
  """The whole T5 (encoder with padding, causal decoder, cross attention, a key/value
  prefix) gives the same logits and gradients, for the prefix and for every parameter
  (the position biases included), whichever form its attention takes."""
  if jax.default_backend() != "cpu":
    pytest.skip("the blocked form is used on CPU only")
  cfg = configs.get_config("tiny")
  params = t5.init_params(cfg, jax.random.key(0))
  r = np.random.default_rng(0)
  enc = jnp.asarray(r.integers(2, cfg.vocab_size, (2, 12)), jnp.int32).at[1, 9:].set(0)
  dec = jnp.asarray(r.integers(2, cfg.vocab_size, (2, 6)), jnp.int32)
  prefix = jax.tree.map(lambda x: x + 0.1, peft_lib.zero_prefix(cfg, 1, 3))

  def loss(params, prefix):
    logits = t5.T5(cfg).apply({"params": params}, enc, dec, prefix)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5] ** 2), logits

  calls = []
  blocked = sa.blocked
  monkeypatch.setattr(sa, "blocked", lambda *a: calls.append(1) or blocked(*a))
  results = {}
  for name, min_scores in (("dense", 2**62), ("blocked", 0)):
    monkeypatch.setattr(sa, "MIN_SCORES", min_scores)
    results[name] = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, prefix)
  assert len(calls) == cfg.num_encoder_layers + 2 * cfg.num_decoder_layers
  (_, got_logits), got_grads = results["blocked"]
  (_, want_logits), want_grads = results["dense"]
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_grads, want_grads)
