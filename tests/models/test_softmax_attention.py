"""The blocked (per-example, recomputing) attention and the fused (cuDNN) call equal the dense
attention, values and grads."""
import functools

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
    "a query that sees nothing": jnp.tril(jnp.ones((Q, K), bool), 2).at[3].set(False)[None, None],
    "per example, one query blind": jnp.broadcast_to(
        jnp.tril(jnp.ones((Q, K), bool), 2), (B, 1, Q, K)).at[2, 0, 5].set(False),
}
NOTHING_VISIBLE = ["empty example", "a query that sees nothing", "per example, one query blind"]
BIASES = {"none": None, "shared": (1, H, Q, K), "per example": (B, H, Q, K)}


# `fused` runs through XLA here: the same call (layout, scale 1, bias and mask) that runs
# cuDNN's kernel on a GPU, where benchmarks/device_bench.sh checks it against `dense`.
IMPLS = {"blocked": sa.blocked, "fused": functools.partial(sa.fused, implementation="xla")}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("bias", BIASES)
def test_equals_dense(impl, mask, bias):
  impl = IMPLS[impl]
  q, k, v = _qkv()
  mask = MASKS[mask]
  shape = BIASES[bias]
  b = None if shape is None else jnp.asarray(np.random.default_rng(2).normal(size=shape),
                                             jnp.float32)
  np.testing.assert_allclose(impl(q, k, v, b, mask), sa.dense(q, k, v, b, mask), atol=1e-6)
  # A non-linear loss, so that every input's gradient depends on the attention weights.
  argnums = (0, 1, 2) if b is None else (0, 1, 2, 3)
  grads = {f: jax.grad(lambda *a: jnp.sum(f(*a, mask) ** 3), argnums)(q, k, v, b)
           for f in (impl, sa.dense)}
  for got, want in zip(grads[impl], grads[sa.dense]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_blocked_skips_a_frozen_bias_and_jits():
  q, k, v = _qkv()
  bias = jnp.ones((1, H, Q, K))
  f = jax.jit(jax.grad(lambda q: jnp.sum(sa.blocked(q, k, v, bias, MASKS["padding"]) ** 2)))
  want = jax.grad(lambda q: jnp.sum(sa.dense(q, k, v, bias, MASKS["padding"]) ** 2))(q)
  np.testing.assert_allclose(f(q), want, rtol=1e-4, atol=1e-5)


def test_fused_takes_16_bit_inputs_heads_of_8k_up_to_128_and_even_lengths():
  q = jnp.zeros((2, 512, 16, 64), jnp.bfloat16)
  assert sa.fused_supports(q, 544) and sa.fused_supports(q.astype(jnp.float16), 544)
  assert not sa.fused_supports(q.astype(jnp.float32), 544)
  assert not sa.fused_supports(q, 545)
  assert not sa.fused_supports(q[:, :1], 544)  # one decode step's query
  assert not sa.fused_supports(q[..., :60], 544)
  assert not sa.fused_supports(jnp.zeros((2, 512, 16, 136), jnp.bfloat16), 544)
  if jax.default_backend() == "cpu":
    assert not sa.use_fused(q, 544)


@pytest.mark.parametrize("capability,devices,expected", [
    ("9.0", 1, True), ("8.0", 1, True), ("7.5", 1, False), ("9.0", 2, False)])
def test_use_fused_needs_one_cuda_device_of_capability_8(monkeypatch, capability, devices,
                                                         expected):
  class Device:  # what use_fused reads of a CUDA device
    compute_capability = capability
    client = type("Client", (), {"platform_version": "cuda 12080"})()

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [Device()] * devices)
  monkeypatch.setattr(sa, "_one_device_mesh", lambda: devices == 1)
  assert sa.use_fused(jnp.zeros((2, 512, 16, 64), jnp.bfloat16), 544) == expected


def test_use_blocked_needs_large_scores_on_one_device():
  big = (1, 1, 1024, 2048)  # 2**21 scores
  assert sa.use_blocked(*big) == (jax.default_backend() == "cpu")
  assert not sa.use_blocked(1, 1, 1024, 2047)
  if jax.device_count() > 1:  # a mesh that splits the batch keeps the dense form
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=jax.device_count()))
    with jax.set_mesh(mesh):
      assert not sa.use_blocked(*big)


@pytest.mark.parametrize("mask", NOTHING_VISIBLE)
def test_fused_gives_a_query_that_sees_no_key_the_dense_result(monkeypatch, mask):
  """Where no key is visible, `fused` neither shows the kernel such a row nor uses its
  result there (cuDNN's gradients there were far off on an H100): a stand-in kernel that
  would return NaN values and gradients for such rows changes nothing, because `fused`
  unmasks them before the call (without that, its gradients are NaN; without the
  replacement after it, its values differ)."""
  real = jax.nn.dot_product_attention

  def nan_where_nothing_is_visible(q, k, v, bias, mask, **kw):
    sees_a_key = jnp.any(mask, axis=-1).transpose(0, 2, 1)[..., None]
    nan_there = jnp.where(sees_a_key, 0.0, jnp.nan)  # NaN values and gradients there only
    return jnp.where(sees_a_key, real(q, k, v, bias, mask, **kw), q * nan_there)

  monkeypatch.setattr(jax.nn, "dot_product_attention", nan_where_nothing_is_visible)
  test_equals_dense("fused", mask, "shared")


@pytest.mark.parametrize("form", ["blocked", "fused"])
def test_t5_attention_forms_match_dense(monkeypatch, form):
  """The whole T5 (encoder with padding, causal decoder, cross attention, a key/value
  prefix) gives the same logits and gradients, for the prefix and for every parameter
  (the position biases included), whichever form its attention takes. The fused form is
  cuDNN's call, here through XLA."""
  if form == "blocked" and jax.default_backend() != "cpu":
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
  impl = sa.blocked if form == "blocked" else functools.partial(sa.fused, implementation="xla")
  monkeypatch.setattr(sa, form, lambda *a: calls.append(1) or impl(*a))
  monkeypatch.setattr(sa, "MIN_SCORES", 2**62)
  monkeypatch.setattr(sa, "use_fused", lambda q, k_len: False)
  results = {"dense": jax.value_and_grad(loss, (0, 1), has_aux=True)(params, prefix)}
  if form == "blocked":
    monkeypatch.setattr(sa, "MIN_SCORES", 0)
  else:
    monkeypatch.setattr(sa, "use_fused", lambda q, k_len: True)
  results[form] = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, prefix)
  assert len(calls) == cfg.num_encoder_layers + 2 * cfg.num_decoder_layers
  (_, got_logits), got_grads = results[form]
  (_, want_logits), want_grads = results["dense"]
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_grads, want_grads)
