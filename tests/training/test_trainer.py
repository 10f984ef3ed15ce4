"""The training loop: crash-on-NaN keeps the last good checkpoint; the host's step count;
microbatching is exact."""
import jax
import numpy as np
import pytest

import learning_setup as setup
from hypert5.models import configs, hypermodel, t5
from hypert5.training import checkpoints, modes, optimizers, partitioning
from hypert5.training import trainer as trainer_lib, train_step

CFG = configs.get_config("tiny")


def _setup(num_steps, tmp_path):
  objective = modes.Objective("hyper", CFG, hypermodel.HyperT5Config(
      t5=CFG, peft_type="lora", head_hidden=32))
  downstream = t5.init_params(CFG, jax.random.key(0))
  trainable, frozen = objective.init(jax.random.key(1), downstream)
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adamw", warmup_steps=1))
  cfg = trainer_lib.TrainerConfig(num_steps=num_steps, checkpoint_every=2, log_every=1,
                                  async_checkpoints=False, enable_dropout=False)
  rng = np.random.default_rng(0)
  train_tasks, _ = setup.split_tasks()
  batches = iter(lambda: setup.make_batch(train_tasks, 8, 2, rng), None)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1))
  tr = trainer_lib.Trainer(objective, opt, cfg, mesh, setup.make_batch(train_tasks, 8, 2, rng))
  return tr, tr.init_state(trainable), tr.place_frozen(frozen), batches, opt


def test_crash_on_nan_keeps_the_last_good_checkpoint(tmp_path):
  tr, state, frozen, batches, opt = _setup(6, tmp_path)
  real_step = tr._step

  def poisoned(state, frozen, batch):  # the loss turns NaN at step 5
    state, metrics = real_step(state, frozen, batch)
    if int(state.step) >= 5:
      metrics = dict(metrics, loss=metrics["loss"] * np.nan)
    return state, metrics
  tr._step = poisoned
  ckpt = checkpoints.Checkpointer(str(tmp_path), period=2, async_save=False)
  with pytest.raises(trainer_lib.NaNLossError, match=r"by step 5; the last good checkpoint"):
    tr.train(state, frozen, batches, [trainer_lib.CheckpointHook(ckpt)])
  reader = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  assert reader.latest_step() == 4
  restored, meta = reader.restore(state)
  assert int(restored.step) == 4 and meta["batches"] == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
  reader.close()
  # Another run can start from these parameters (hyperpretraining -> MTF), nothing else.
  params = checkpoints.restore_params_from(str(tmp_path), state)
  jax.tree.map(np.testing.assert_array_equal, params, restored.params)


def test_hooks_see_the_states_step_counted_on_the_host(tmp_path):
  """The loop counts steps on the host (no device sync per step), from the state's step,
  so a resumed run's hooks and its stopping point agree with the state."""
  tr, state, frozen, batches, _ = _setup(6, tmp_path)

  class Record(trainer_lib.Hook):
    def __init__(self):
      self.seen = []

    def on_step(self, trainer, state, metrics):
      self.seen.append((trainer.step, int(state.step)))
  first = Record()
  state = tr.train(state, frozen, batches, [first])
  assert first.seen == [(i, i) for i in range(1, 7)] and int(state.step) == 6
  tr.config = trainer_lib.TrainerConfig(num_steps=9, enable_dropout=False)
  resumed = Record()
  state = tr.train(state, frozen, batches, [resumed])
  assert resumed.seen == [(i, i) for i in range(7, 10)] and int(state.step) == 9


def test_microbatches_match_the_full_batch():
  objective = modes.Objective("hyper", CFG, hypermodel.HyperT5Config(
      t5=CFG, peft_type="prefix", prefix_length=6, head_hidden=32))  # as test_hypermodel
  trainable, frozen = objective.init(jax.random.key(1), t5.init_params(CFG, jax.random.key(0)))
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(name="adamw", warmup_steps=1))
  state = train_step.create_train_state(opt, trainable, jax.random.key(2))
  train_tasks, _ = setup.split_tasks()
  batch = setup.make_batch(train_tasks, 8, 2, np.random.default_rng(3))
  batch["decoder_loss_weights"][::3, 4:] = 0  # unequal token counts per microbatch
  outs = [jax.jit(train_step.make_train_step(objective, opt, m, enable_dropout=False))(
      state, frozen, batch) for m in (1, 4)]
  np.testing.assert_allclose(outs[0][1]["loss"], outs[1][1]["loss"], rtol=1e-5)
  np.testing.assert_allclose(outs[0][1]["grad_norm"], outs[1][1]["grad_norm"], rtol=1e-5)
  # One Adam step (lr 1e-3) from gradients equal to float rounding: a wrong accumulation
  # would move parameters by ~lr, far beyond this tolerance.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
               outs[0][0].params, outs[1][0].params)
