"""HyperLlama learns: on held-out tasks of the synthetic family (tests/learning_setup.py),
the downstream loss with HyperLlama-generated prefixes falls at least 30% below the frozen
model's within 100 steps (fixed seeds, tiny Llama, 8 gist tokens, 4-shot; measured 6.29 ->
3.84, i.e. 39% lower; ~25 s on 2 CPU cores).

The frozen Llama is randomly initialised and only the gist embeddings and the hyper
stream's LoRA train, so every gain reaches the downstream through the generated keys and
values. As with HyperT5's learning test, the gain here is the prefix steering a random
downstream towards the family's outputs: held-out loss with another task's examples is the
same (3.851 vs 3.851 at 100 steps, 3.737 vs 3.737 at 300). Using the examples needs a
trained downstream (the demo).
"""
import jax
import numpy as np

import learning_setup as setup
from hypert5.models import gisting, llama
from hypert5.training import modes, optimizers, train_step

STEPS, THRESHOLD = 100, 0.30


def decoder_only(batch):
  """learning_setup's encoder-decoder batch in DecoderOnlyFeatureConverter's layout."""
  enc, tgt = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
  stream = np.concatenate([enc, tgt], axis=1)
  return {"hyper_input_tokens": batch["hyper_encoder_input_tokens"],
          "decoder_target_tokens": stream,
          "decoder_input_tokens": np.pad(stream, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": np.concatenate(
              [np.zeros_like(enc), np.ones_like(tgt)], axis=1).astype(np.float32)}


def test_hyperllama_prefixes_cut_held_out_loss():
  cfg = llama.get_config("tiny")
  base = llama.init_params(cfg, jax.random.key(0))
  objective = modes.DecoderObjective("hyper", cfg, gisting.HyperLlamaConfig(cfg, num_gist=8))
  trainable, frozen = objective.init(jax.random.key(1), base)
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(
      name="adamw", learning_rate=1e-2, schedule="constant", warmup_steps=20))
  state = train_step.create_train_state(opt, trainable, jax.random.key(2))
  step = jax.jit(train_step.make_train_step(objective, opt, enable_dropout=False))
  evaluate = jax.jit(train_step.make_eval_step(objective))
  train_tasks, held_out = setup.split_tasks()
  eval_batch = decoder_only(setup.make_batch(held_out, 128, 4, np.random.default_rng(1)))

  total, count = jax.jit(modes.DecoderObjective("full", cfg).loss)(base, {}, eval_batch)
  frozen_loss = float(total / count)
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    state, _ = step(state, frozen, decoder_only(setup.make_batch(train_tasks, 32, 4, rng)))
  m = evaluate(state.params, frozen, eval_batch)
  final = float(m["loss_sum"] / m["tokens"])
  print(f"held-out loss: frozen {frozen_loss:.3f} -> HyperLlama {final:.3f}")
  assert final < (1 - THRESHOLD) * frozen_loss
