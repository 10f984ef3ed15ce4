"""Prefix/LoRA tuning from hyper-init or random values, full mode, and rank scoring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import learning_setup as setup
from hypert5.models import configs, hypermodel, t5
from hypert5.training import evaluation, modes, optimizers, train_step

CFG = configs.get_config("tiny")
# test_hypermodel's configs: the session's compilation cache (tests/conftest.py) then
# compiles each hypermodel init once.
HYPER = hypermodel.HyperT5Config(t5=CFG, peft_type="lora", prefix_length=6, head_hidden=32)


@pytest.fixture(scope="module")
def downstream():
  return t5.init_params(CFG, jax.random.key(0))


@pytest.mark.parametrize("kind", ["prefix", "lora"])
def test_peft_tuning_from_hyper_init_and_random(downstream, kind):
  hcfg = HYPER.replace(peft_type=kind)
  train_tasks, _ = setup.split_tasks()
  task = train_tasks[0]
  batch = setup.make_batch([task], 16, 2, np.random.default_rng(0))
  hyper_obj = modes.Objective("hyper", CFG, hcfg)
  hparams, _ = hyper_obj.init(jax.random.key(1), downstream)
  generated = hyper_obj.generate(hparams, downstream, batch)
  objective = modes.Objective(kind, CFG, hcfg)
  # Prefix values are O(1) activations; they need a larger step than LoRA's A and B.
  lr = 1e-1 if kind == "prefix" else 1e-2
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(
      name="adamw", learning_rate=lr, schedule="constant", warmup_steps=1))
  step = jax.jit(train_step.make_train_step(objective, opt, enable_dropout=False))
  for init in (generated, None):
    trainable, frozen = objective.init(jax.random.key(2), downstream, init)
    if init is not None:  # hyper-init starts from the generated values of the first row
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[:1]), trainable, generated)
    assert jax.tree.leaves(trainable)[0].shape[0] == 1  # one task's parameters, broadcast
    state = train_step.create_train_state(opt, trainable, jax.random.key(3))
    losses = []
    for _ in range(15):
      state, metrics = step(state, frozen, batch)
      losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses  # one fixed batch: a clear, steady drop


def test_full_mode_trains_the_downstream_itself(downstream):
  objective = modes.Objective("full", CFG)
  trainable, frozen = objective.init(jax.random.key(0), downstream)
  assert frozen == {} and trainable is downstream
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adamw", warmup_steps=1))
  state = train_step.create_train_state(opt, trainable, jax.random.key(3))
  batch = setup.make_batch(setup.split_tasks()[0], 8, 2, np.random.default_rng(0))
  new, _ = jax.jit(train_step.make_train_step(objective, opt, enable_dropout=False))(
      state, frozen, batch)
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.params, downstream)
  assert max(jax.tree.leaves(diff)) > 0


def test_score_fn_returns_target_log_likelihoods(downstream):
  objective = modes.Objective("full", CFG)
  predictor = evaluation.Predictor(objective, batch_size=4, max_decode_length=5)
  rng = np.random.default_rng(1)
  rows = []
  for _ in range(6):  # 6 rows: two batches, the second padded
    tgt = np.pad(rng.integers(2, 50, 3), (0, 2)).astype(np.int32)
    rows.append({"encoder_input_tokens": rng.integers(2, 50, 6).astype(np.int32),
                 "decoder_input_tokens": np.pad(tgt, (1, 0))[:-1],
                 "decoder_target_tokens": tgt})
  ds = tf.data.Dataset.from_tensor_slices(
      {k: np.stack([r[k] for r in rows]) for k in rows[0]}).enumerate()
  scores = dict(predictor.score_fn(downstream, {})(ds))
  assert sorted(scores) == list(range(6))
  for i, r in enumerate(rows):
    logits = t5.T5(CFG).apply({"params": downstream}, r["encoder_input_tokens"][None],
                              r["decoder_input_tokens"][None])
    logp = jax.nn.log_softmax(logits[0])
    want = sum(float(logp[j, t]) for j, t in enumerate(r["decoder_target_tokens"]) if t)
    np.testing.assert_allclose(scores[i], want, atol=1e-4)


def test_predictions_share_a_length_and_decode_to_the_text():
  from hypert5.data import vocab
  byte = vocab.get_vocabulary("byte")
  short = evaluation.as_prediction(np.array([100, 101, 1, 0, 0, 0]), 6)
  long = evaluation.as_prediction(np.array([100, 101, 102, 103, 104, 105]), 6)
  assert len(short) == len(long) == 6
  np.array([short, long])  # what seqio does with them
  assert byte.decode(short) == byte.decode([100, 101]) and byte.decode(long) != byte.decode(short)


def test_rows_of_several_queries_share_one_generated_lora(downstream):
  """[rows, Q, length] query features: one hypermodel forward per row, its LoRA applied to
  each of the row's Q queries; the same loss as the hyper input written out per query."""
  obj = modes.Objective("hyper", CFG, HYPER)
  trainable, frozen = obj.init(jax.random.key(1), downstream)
  # B (the LoRA head's second output) starts at zero; move the head so the LoRA matters.
  trainable = {**trainable, "head": jax.tree.map(lambda x: x + 0.5, trainable["head"])}
  rng = np.random.default_rng(0)
  rows, q = 3, 4
  ids = lambda *shape: rng.integers(3, CFG.vocab_size, shape).astype(np.int32)
  grouped = {"hyper_encoder_input_tokens": ids(rows, 20), "encoder_input_tokens": ids(rows, q, 7),
             "decoder_target_tokens": ids(rows, q, 5)}
  grouped["decoder_input_tokens"] = np.concatenate(
      [np.zeros((rows, q, 1), np.int32), grouped["decoder_target_tokens"][..., :-1]], -1)
  grouped["decoder_loss_weights"] = np.ones((rows, q, 5), np.int32)
  written_out = {k: v.reshape(rows * q, -1) for k, v in grouped.items()}
  written_out["hyper_encoder_input_tokens"] = np.repeat(
      grouped["hyper_encoder_input_tokens"], q, axis=0)
  loss, count = obj.loss(trainable, frozen, grouped)
  loss_out, count_out = obj.loss(trainable, frozen, written_out)
  np.testing.assert_allclose(loss, loss_out, rtol=1e-6)
  assert count == count_out == rows * q * 5
  # Pairing a row's queries with another row's examples changes the loss.
  other = dict(grouped, hyper_encoder_input_tokens=grouped["hyper_encoder_input_tokens"][::-1])
  assert abs(float(obj.loss(trainable, frozen, other)[0]) - float(loss)) > 0.1
