"""HyperT5 and PEFT injection: shapes, exact no-op cases, scan/cache paths, hyper-mode steps."""
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hypert5 import decoding
from hypert5.models import configs, hypermodel, peft as peft_lib, t5
from hypert5.training import flops, model_io, modes, optimizers, partitioning, train_step

CFG = configs.get_config("tiny")
ENC = jnp.array([[5, 6, 7, 8, 9, 1, 0, 0], [8, 9, 1, 0, 0, 0, 0, 0]])
DEC = jnp.array([[0, 3, 4, 5], [0, 5, 7, 0]])
HYPER = jnp.array([[11, 12, 13, 3, 14, 15, 1, 0, 0, 0], [21, 22, 3, 23, 1, 0, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def downstream():
  return t5.init_params(CFG, jax.random.key(0))


def _hyper_cfg(kind):
  return hypermodel.HyperT5Config(t5=CFG, peft_type=kind, prefix_length=6, head_hidden=32)


@pytest.fixture(scope="module", params=["prefix", "lora"])
def generated(request, downstream):
  hcfg = _hyper_cfg(request.param)
  hparams = hypermodel.init_hyper_params(hcfg, jax.random.key(1), downstream)
  peft = hypermodel.HyperT5(hcfg).apply({"params": hparams}, HYPER)
  if request.param == "lora":  # make B non-zero so the delta is visible
    peft = peft.replace(b=jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), peft.b))
  return hcfg, hparams, peft


def _apply(cfg, params, peft=None, enc=ENC, dec=DEC):
  return t5.T5(cfg).apply({"params": params}, enc, dec, peft)


def test_generated_shapes(generated):
  hcfg, _, peft = generated
  if hcfg.peft_type == "prefix":
    assert set(peft.keys) == set(peft_lib.ATTENTION_KINDS)
    for x in list(peft.keys.values()) + list(peft.values.values()):
      assert x.shape == (2, CFG.num_encoder_layers, 6, CFG.num_heads, CFG.head_dim)
  else:
    assert peft.targets() == list(hypermodel.DEFAULT_LORA_TARGETS)
    a, b = peft.a["encoder_self"]["q"], peft.b["encoder_self"]["q"]
    assert a.shape == (2, CFG.num_encoder_layers, CFG.d_model, hcfg.lora_rank)
    assert b.shape == (2, CFG.num_encoder_layers, hcfg.lora_rank, CFG.inner_dim)


def test_body_is_initialised_from_downstream(downstream, generated):
  _, hparams, _ = generated
  for name in ("token_embedder", "encoder"):
    jax.tree.map(np.testing.assert_array_equal, hparams[name], downstream[name])
  assert "logits_dense" not in hparams["decoder"]


@pytest.mark.parametrize("scan", [False, True])
def test_extra_encoder_layers_start_as_the_identity(scan):
  """Grown past the downstream, the hypermodel generates what it would without the extra
  layers; they are real layers (trainable, not zero everywhere) and FLOPs count them."""
  cfg = CFG.replace(scan_layers=scan)
  down = t5.init_params(cfg, jax.random.key(0))
  grown = hypermodel.HyperT5Config(t5=cfg, peft_type="prefix", prefix_length=6, head_hidden=32,
                                   extra_encoder_layers=2)
  plain = grown.replace(extra_encoder_layers=0)
  assert grown.body.num_encoder_layers == CFG.num_encoder_layers + 2
  params = hypermodel.init_hyper_params(grown, jax.random.key(1), down)
  plain_params = {**params, "encoder": down["encoder"]}
  generate = lambda hcfg, p: hypermodel.HyperT5(hcfg).apply({"params": p}, HYPER)
  out = jax.jit(generate, static_argnums=0)(grown, params)
  ref = jax.jit(generate, static_argnums=0)(plain, plain_params)
  jax.tree.map(np.testing.assert_array_equal, out, ref)
  enc = params["encoder"]
  extra = ([jax.tree.map(lambda x: x[i], enc["layers"]) for i in (2, 3)] if scan
           else [enc["layers_2"], enc["layers_3"]])
  for layer in extra:
    assert not np.any(layer["attention"]["out"]["kernel"])
    assert not np.any(layer["mlp"]["wo"]["kernel"])
    assert np.any(layer["attention"]["query"]["kernel"])
  # ... and their gradients are not zero: they learn
  grads = jax.jit(jax.grad(lambda p: generate(grown, p).keys["encoder_self"].sum()))(
      params)["encoder"]
  layer_2 = jax.tree.map(lambda x: x[2], grads["layers"]) if scan else grads["layers_2"]
  wo_grad = layer_2["mlp"]["wo"]["kernel"]
  assert np.any(wo_grad)
  assert (flops.step_flops("hyper", cfg, 2, 8, 4, 10, 6, 6, grown.body)
          > flops.step_flops("hyper", cfg, 2, 8, 4, 10, 6, 6))
  # peft_friendly's description readers have the T5 itself as their body: no extra layers
  assert modes.Objective("peft_friendly", cfg, grown).reader("lora").extra_encoder_layers == 0


def test_downstream_deeper_than_the_body_is_an_error(downstream):
  enc = downstream["encoder"]
  deeper = {**downstream, "encoder": {**enc, f"layers_{CFG.num_encoder_layers}": enc["layers_0"]}}
  hyper = nn.unbox(hypermodel.abstract_hyper_params(_hyper_cfg("lora")))
  with pytest.raises(ValueError, match="'encoder' parameters do not match"):
    jax.eval_shape(hypermodel.init_from_downstream, hyper, deeper)


def test_initial_lora_is_exactly_the_frozen_model(downstream):
  hcfg = _hyper_cfg("lora")
  hparams = hypermodel.init_hyper_params(hcfg, jax.random.key(1), downstream)
  lora = hypermodel.HyperT5(hcfg).apply({"params": hparams}, HYPER)
  assert all(not np.any(b) for b in jax.tree.leaves(lora.b))
  np.testing.assert_array_equal(_apply(CFG, downstream, lora), _apply(CFG, downstream))


def test_one_adam_step_moves_generated_lora_entries_at_a_direct_loras_rate(downstream):
  """Adam's first step moves every kernel entry by lr, so an output layer's entry moves by
  lr x sum_j |x_j| for a plain dense layer (fan_in coherent inputs), but by lr x mean_j |x_j|
  (about lr, as for a directly tuned LoRA) in the head's rate-matched A / B layers. The
  plain layer's rate made the demo's generated q deltas run away (hypermodel._RateMatchedDense)."""
  hcfg = _hyper_cfg("lora")
  hparams = hypermodel.init_hyper_params(hcfg, jax.random.key(1), downstream)
  model, lr = hypermodel.HyperT5(hcfg), 1e-3
  lora, inter = model.apply({"params": hparams}, HYPER, capture_intermediates=True)
  trunks = [x for name, calls in inter["intermediates"]["head"].items()
            if name.endswith("_trunk") for x in calls["__call__"]]  # [batch, layers, hidden]
  mean_abs_x = max(float(jnp.abs(x).mean(-1).max()) for x in trunks)
  # A directional loss on every generated entry: each output kernel gets a dense gradient.
  weights = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape), lora)

  def objective(head):
    out = model.apply({"params": {**hparams, "head": head}}, HYPER)
    return sum(jnp.vdot(w, x) for w, x in zip(jax.tree.leaves(weights), jax.tree.leaves(out)))

  head = hparams["head"]
  outputs = {k for k in head if k.endswith(("_a", "_b"))}
  grads = jax.grad(objective)(head)
  grads = {k: g if k in outputs else jax.tree.map(jnp.zeros_like, g) for k, g in grads.items()}
  opt = optax.adam(lr)
  updates, _ = opt.update(grads, opt.init(head), head)
  moved = model.apply({"params": {**hparams, "head": optax.apply_updates(head, updates)}}, HYPER)
  for before, after in zip(jax.tree.leaves(lora), jax.tree.leaves(moved)):
    step = float(jnp.abs(after - before).max())
    assert 0 < step <= lr * mean_abs_x * 1.001, (step, lr * mean_abs_x)
  plain_rate = lr * min(float(jnp.abs(x).sum(-1).min()) for x in trunks)
  assert plain_rate > 10 * lr * mean_abs_x


def test_zero_length_prefix_is_exactly_the_frozen_model(downstream):
  prefix = peft_lib.zero_prefix(CFG, 2, 0)
  np.testing.assert_array_equal(_apply(CFG, downstream, prefix), _apply(CFG, downstream))


def test_peft_changes_output_per_example(downstream, generated):
  _, _, peft = generated
  base = _apply(CFG, downstream)
  out = _apply(CFG, downstream, peft)
  assert float(jnp.abs(out - base).max()) > 1e-3
  # Row 0's parameters broadcast from a batch of 1 give row 0's output.
  row0 = jax.tree.map(lambda x: x[:1], peft)
  np.testing.assert_allclose(_apply(CFG, downstream, row0)[0], out[0], atol=1e-5)


def test_prefix_is_visible_to_padded_queries_and_has_no_position_bias(downstream):
  # A prefix whose keys equal the first real token's key, but with zero bias, differs from
  # duplicating the token; check the defining property instead: shifting the sequence by
  # padding on the right leaves outputs unchanged, prefix included.
  prefix = peft_lib.zero_prefix(CFG, 1, 3)
  prefix = jax.tree.map(lambda x: jax.random.normal(jax.random.key(7), x.shape), prefix)
  enc_pad = jnp.pad(ENC, ((0, 0), (0, 3)))
  np.testing.assert_allclose(_apply(CFG, downstream, prefix),
                             _apply(CFG, downstream, prefix, enc=enc_pad), atol=1e-5)


def test_scan_layers_and_cache_with_peft(downstream, generated):
  _, _, peft = generated
  base = _apply(CFG, downstream, peft)
  scfg = CFG.replace(scan_layers=True)
  sparams = model_io.stack_layers(downstream, scfg)
  np.testing.assert_allclose(_apply(scfg, sparams, peft), base, atol=1e-5)
  # The uncached decoders re-run the checked forward pass: the reference for the cached
  # ones, unscanned and scanned (each decoding loop is a compile of its own).
  model = t5.T5(CFG)
  plain = decoding.greedy(model, downstream, ENC, 6, peft=peft, use_cache=False)
  beam_plain = decoding.beam_search(model, downstream, ENC, 6, peft=peft, num_beams=3,
                                    use_cache=False)
  for cfg, params in ((CFG, downstream), (scfg, sparams)):
    model = t5.T5(cfg)
    cached = decoding.greedy(model, params, ENC, 6, peft=peft)
    np.testing.assert_array_equal(cached, plain)
    beam = decoding.beam_search(model, params, ENC, 6, peft=peft, num_beams=3)
    np.testing.assert_array_equal(beam[0], beam_plain[0])


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  tgt = rng.integers(2, 50, (n, 5)).astype(np.int32)
  return {
      "hyper_encoder_input_tokens": rng.integers(2, 50, (n, 10)).astype(np.int32),
      "encoder_input_tokens": rng.integers(2, 50, (n, 8)).astype(np.int32),
      "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": np.ones_like(tgt, np.float32),
  }


@pytest.mark.parametrize("kind", ["prefix", "lora"])
def test_hyper_mode_never_touches_the_downstream(downstream, kind, caplog):
  objective = modes.Objective("hyper", CFG, _hyper_cfg(kind))
  trainable, frozen = objective.init(jax.random.key(1), downstream)
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adamw", warmup_steps=1))
  with caplog.at_level(logging.INFO):
    state = train_step.create_train_state(opt, trainable, jax.random.key(2), objective)
  assert f"{modes.count_params(trainable):,} trainable" in caplog.text
  # The optimizer holds slots for the hypermodel only.
  opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert opt_size <= 2 * modes.count_params(trainable) + 16
  before = jax.tree.map(np.array, frozen)
  step = jax.jit(train_step.make_train_step(objective, opt, enable_dropout=False))
  new_state, metrics = step(state, frozen, _batch())
  assert np.isfinite(metrics["loss"])
  jax.tree.map(np.testing.assert_array_equal, frozen, before)  # bitwise unchanged
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new_state.params, state.params)
  assert any(jax.tree.leaves(changed))


def _grouped_batch(queries: int, rows: int = 8):
  """Rows of several queries (fewshot.group_queries): query features [rows, Q, length]."""
  batch = _batch(rows * queries)
  grouped = {k: v.reshape(rows, queries, -1) for k, v in batch.items()}
  grouped["hyper_encoder_input_tokens"] = batch["hyper_encoder_input_tokens"][:rows]
  return grouped


@pytest.mark.parametrize("queries", [1, 3])
def test_sharded_hyper_step_matches_unsharded(downstream, queries):
  objective = modes.Objective("hyper", CFG, _hyper_cfg("lora"))
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adafactor", warmup_steps=1))
  trainable, frozen = objective.init(jax.random.key(1), downstream)
  # Non-zero B so every head gets a gradient.
  state = train_step.create_train_state(opt, trainable, jax.random.key(2))
  batch = _batch() if queries == 1 else _grouped_batch(queries)
  fn = train_step.make_train_step(objective, opt, microbatches=2, enable_dropout=False)
  ref_state, ref_metrics = jax.jit(fn)(state, frozen, batch)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, model=2))
  state_sh = train_step.state_shardings(objective, opt, mesh)
  frozen_sh = train_step.frozen_shardings(objective, mesh)
  with jax.set_mesh(mesh), partitioning.axis_rules():
    step = train_step.jit_train_step(fn, mesh, state_sh, frozen_sh, batch)
    new_state, metrics = step(jax.device_put(state, state_sh), jax.device_put(frozen, frozen_sh),
                              batch)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               new_state.params, ref_state.params)
  q = new_state.params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
