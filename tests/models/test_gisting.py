"""HyperLlama (gisting): the prefix it generates, one pass vs two, the gist mask, the
decoder-only training modes, sharding, and the Llama-2-7B step lowering abstractly."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypert5.models import gisting, llama
from hypert5.training import llama_io, modes, partitioning

# The tiny golden Llama (random weights; loading skips a compiled init).
BASE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "goldens", "llama_tiny")
CFG, BASE_PARAMS = llama_io.load_llama(BASE)
HYPER = np.array([[11, 12, 13, 3, 14, 15, 1, 0, 0, 0], [21, 22, 3, 23, 1, 0, 0, 0, 0, 0]])
TOKENS = np.array([[0, 5, 6, 7, 8, 9], [0, 9, 8, 7, 0, 0]])
TARGETS = np.array([[5, 6, 7, 8, 9, 1], [9, 8, 7, 1, 0, 0]])
WEIGHTS = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], np.float32)
BATCH = {"hyper_input_tokens": HYPER, "decoder_input_tokens": TOKENS,
         "decoder_target_tokens": TARGETS, "decoder_loss_weights": WEIGHTS}


@pytest.fixture(scope="module")
def base():
  return BASE_PARAMS


def _hyper_cfg(**kw):
  return gisting.HyperLlamaConfig(CFG, num_gist=4, **kw)


@pytest.fixture(scope="module")
def hyper_params(base):
  params = gisting.init_hyper_params(_hyper_cfg(), jax.random.key(1), base)
  # A non-zero B, so the hyper stream's LoRA is really on.
  b = jax.tree.map(lambda x: 0.1 * jax.random.normal(jax.random.key(2), x.shape),
                   params["lora"].b)
  return {**params, "lora": params["lora"].replace(b=b)}


def _grads_close(a, b):
  """Float32 rounding of two equal computations: relative to each leaf's scale."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=1e-4, atol=1e-5 * float(np.abs(y).max())), a, b)


@functools.partial(jax.jit, static_argnums=0)
def _prefix(config, hyper_params, base, hyper_tokens):
  return gisting.generate_prefix(config, hyper_params, base, hyper_tokens)


@functools.partial(jax.jit, static_argnums=0)
def _one_pass(config, hyper_params, base, hyper_tokens, tokens, gist_kv=None):
  return gisting.one_pass_logits(config, hyper_params, base, hyper_tokens, tokens, gist_kv)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(config, hyper_params, base, batch):
  objective = modes.DecoderObjective("hyper", CFG, config)
  return jax.value_and_grad(lambda p: objective.loss(p, base, batch)[0])(hyper_params)


@functools.partial(jax.jit, static_argnums=0)
def _downstream(config, base, tokens, prefix):
  return gisting.downstream_logits(config, base, tokens, prefix)


def test_prefix_shape_and_independence_from_padding(base, hyper_params):
  cfg = _hyper_cfg()
  prefix = _prefix(cfg, hyper_params, base, HYPER)
  assert set(prefix.keys) == {"decoder_self"}
  assert prefix.keys["decoder_self"].shape == (2, CFG.num_layers, 4, CFG.num_kv_heads,
                                               CFG.head_dim)
  # More padding gives the same prefix: few-shot positions are -n..-1 and the gist tokens
  # always sit at 0..G-1.
  padded = _prefix(cfg, hyper_params, base, np.pad(HYPER, ((0, 0), (0, 7))))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), padded, prefix)


def test_one_pass_and_two_pass_give_the_same_loss_and_gradients(base, hyper_params):
  loss2, grads2 = _loss_and_grads(_hyper_cfg(), hyper_params, base, BATCH)
  loss1, grads1 = _loss_and_grads(_hyper_cfg(one_pass=True), hyper_params, base, BATCH)
  np.testing.assert_allclose(loss1, loss2, rtol=1e-6)
  _grads_close(grads1, grads2)
  assert float(jnp.abs(grads2["gist"]).max()) > 0 and float(
      jnp.abs(grads2["lora"].b["decoder_mlp"]["wo"]).max()) > 0


def test_few_shot_text_reaches_the_downstream_only_through_the_gist_kv(base, hyper_params):
  cfg = _hyper_cfg()
  perturbed = HYPER.copy()
  perturbed[:, 1] = 50
  a, prefix_a = _one_pass(cfg, hyper_params, base, HYPER, TOKENS)
  b, _ = _one_pass(cfg, hyper_params, base, perturbed, TOKENS)
  assert float(jnp.abs(a - b).max()) > 1e-2  # the few-shot text matters...
  # ...but with the gist keys / values fixed, perturbing it changes nothing at all.
  fixed_a, _ = _one_pass(cfg, hyper_params, base, HYPER, TOKENS, prefix_a)
  fixed_b, _ = _one_pass(cfg, hyper_params, base, perturbed, TOKENS, prefix_a)
  np.testing.assert_array_equal(fixed_a, fixed_b)
  # The one-pass gist kv are the two-pass prefix; the downstream with it gives the same logits.
  two_pass = _prefix(cfg, hyper_params, base, HYPER)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), prefix_a, two_pass)
  np.testing.assert_allclose(_downstream(CFG, base, TOKENS, two_pass), fixed_a, atol=1e-5)


def test_prefix_tuning_from_hyperllama_starts_at_its_loss(base, hyper_params):
  """Hyper-init: prefix tuning initialised from the generated prefix of a task."""
  hcfg = _hyper_cfg()
  one_task = {**BATCH, "hyper_input_tokens": np.repeat(HYPER[:1], 2, axis=0)}
  generated = _prefix(hcfg, hyper_params, base, one_task["hyper_input_tokens"])
  prefix_mode = modes.DecoderObjective("prefix", CFG, hcfg)
  trainable, frozen = prefix_mode.init(jax.random.key(0), base, initial_peft=generated)
  hyper_loss, _ = _loss_and_grads(hcfg, hyper_params, base, one_task)
  np.testing.assert_allclose(jax.jit(prefix_mode.loss)(trainable, frozen, one_task)[0],
                             hyper_loss, rtol=1e-5)
  random, _ = prefix_mode.init(jax.random.key(0), base)
  assert random.keys["decoder_self"].shape == (1, 2, 4, 2, 16)
  lora, _ = modes.DecoderObjective("lora", CFG, hcfg).init(jax.random.key(0), base)
  assert lora.rank == 8 and lora.a["decoder_self"]["k"].shape == (1, 2, 64, 8)
  assert modes.DecoderObjective("full", CFG).abstract_frozen() == {}
  with pytest.raises(ValueError, match="needs a HyperLlamaConfig"):
    modes.DecoderObjective("prefix", CFG)


def test_generated_prefix_exports_to_peft_and_back(base, hyper_params, tmp_path):
  prefix = jax.tree.map(lambda x: x[:1], _prefix(_hyper_cfg(), hyper_params, base, HYPER))
  llama_io.save_peft_prefix(prefix, CFG, tmp_path / "adapter")
  again = llama_io.load_peft_prefix(tmp_path / "adapter", CFG)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), again, prefix)
  # The generic files keep our convention (keys un-rotated) as is.
  from hypert5.training import peft_io
  for save, load, path in ((peft_io.save_peft_safetensors, peft_io.load_peft_safetensors,
                            tmp_path / "p.safetensors"),
                           (peft_io.save_peft_orbax, peft_io.load_peft_orbax, tmp_path / "orbax")):
    save(prefix, str(path))
    jax.tree.map(np.testing.assert_array_equal, load(str(path)), prefix)


def test_sharded_hyper_step_matches_single_device(base, hyper_params):
  objective = modes.DecoderObjective("hyper", CFG, _hyper_cfg())
  loss_fn = lambda p, f, b: objective.loss(p, f, b)[0]
  ref_loss, ref_grads = _loss_and_grads(_hyper_cfg(), hyper_params, base, BATCH)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 2, 4))  # batch 2 over fsdp
  train_sh = partitioning.param_shardings(objective.abstract_trainable(), mesh)
  frozen_sh = partitioning.param_shardings(objective.abstract_frozen(), mesh)
  batch_sh = {k: partitioning.batch_sharding(mesh, v.ndim) for k, v in BATCH.items()}
  with jax.set_mesh(mesh), partitioning.axis_rules():
    step = jax.jit(jax.value_and_grad(loss_fn), in_shardings=(train_sh, frozen_sh, batch_sh))
    loss, grads = step(jax.device_put(hyper_params, train_sh), jax.device_put(base, frozen_sh),
                       jax.device_put(BATCH, batch_sh))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _grads_close(grads, ref_grads)


def test_llama2_7b_hyper_step_lowers_with_abstract_shapes():
  """Llama-2-7B-sized HyperLlama training step, traced and lowered on CPU, nothing allocated."""
  big = llama.get_config("llama2_7b", scan_layers=True, dtype="bfloat16", remat_policy="full")
  objective = modes.DecoderObjective("hyper", big, gisting.HyperLlamaConfig(big))
  batch = {k: jax.ShapeDtypeStruct((2, n), jnp.float32 if k == "decoder_loss_weights" else
                                   jnp.int32)
           for k, n in (("hyper_input_tokens", 256), ("decoder_input_tokens", 128),
                        ("decoder_target_tokens", 128), ("decoder_loss_weights", 128))}
  trainable = jax.eval_shape(lambda: gisting.init_hyper_params(objective.hyper,
                                                               jax.random.key(0)))
  frozen = jax.tree.map(lambda x: x.value, objective.abstract_frozen(),
                        is_leaf=lambda x: hasattr(x, "names"))
  lowered = jax.jit(jax.grad(lambda p, f, b: objective.loss(p, f, b)[0])).lower(
      trainable, frozen, batch)
  assert "while" in lowered.as_text()[:2_000_000]  # layers scanned, not unrolled
  n = sum(x.size for x in jax.tree.leaves(frozen))
  assert 6.5e9 < n < 7e9, n
