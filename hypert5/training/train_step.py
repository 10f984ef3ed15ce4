"""Train state, the train/eval step functions, and jitting them with explicit shardings.

The frozen downstream model is an argument of each step, never part of the state: it gets
no gradient, no optimizer slot, and is never donated or re-saved.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hypert5.training import modes, partitioning

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(optimizer: optax.GradientTransformation, trainable: Any,
                       rng: jax.Array, objective: modes.Objective | None = None) -> TrainState:
  if objective is not None:
    log.info("mode %s: %s trainable parameters", objective.mode,
             f"{modes.count_params(trainable):,}")
  return TrainState(step=jnp.array(0, jnp.int32), params=trainable,
                    opt_state=optimizer.init(trainable), rng=rng)


def _split_microbatches(batch: dict, n: int) -> dict:
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by {n} microbatches")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])
  return jax.tree.map(split, batch)


def make_train_step(objective: modes.Objective, optimizer: optax.GradientTransformation,
                    microbatches: int = 1, enable_dropout: bool = True) -> Callable:
  """train_step(state, frozen, batch) -> (state, metrics); gradients are per-token means."""

  def grads_of(params, frozen, batch, rng):
    def f(p):
      return objective.loss(p, frozen, batch, rng, enable_dropout)
    (loss_sum, weight_sum), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss_sum, weight_sum, grads

  def train_step(state: TrainState, frozen: Any, batch: dict):
    rng, step_rng = jax.random.split(state.rng)
    if microbatches == 1:
      loss_sum, weight_sum, grads = grads_of(state.params, frozen, batch, step_rng)
    else:
      def accumulate(carry, xs):
        mb, i = xs
        l, w, g = grads_of(state.params, frozen, mb, jax.random.fold_in(step_rng, i))
        return jax.tree.map(jnp.add, carry, (l, w, g)), None
      zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss_sum, weight_sum, grads), _ = jax.lax.scan(
          accumulate, zeros, (_split_microbatches(batch, microbatches),
                              jnp.arange(microbatches)))
    denom = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / denom, "tokens": weight_sum,
               "grad_norm": optax.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         rng=rng), metrics

  return train_step


def make_eval_step(objective: modes.Objective) -> Callable:
  """eval_step(params, frozen, batch) -> {"loss_sum", "tokens"} (sums, to aggregate)."""
  def eval_step(params, frozen, batch):
    loss_sum, weight_sum = objective.loss(params, frozen, batch)
    return {"loss_sum": loss_sum, "tokens": weight_sum}
  return eval_step


# -- shardings --------------------------------------------------------------------------


def state_shardings(objective: modes.Objective, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
  """NamedShardings for every TrainState leaf, derived from the logical axis names."""
  boxed = objective.abstract_trainable()
  param_sh = partitioning.param_shardings(boxed, mesh)
  abstract = nn.unbox(boxed)  # Adafactor's factored state must see plain shapes
  opt_abstract = jax.eval_shape(optimizer.init, abstract)
  rep = partitioning.replicated(mesh)
  # Optimizer slots shaped like their parameter share its sharding; factored statistics
  # (smaller shapes) and counters are replicated.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # multi_transform's other group
  opt_sh = optax.tree_map_params(
      optimizer,
      lambda s, sh, p: s if masked(s) else sh if getattr(s, "shape", None) == p.shape else rep,
      opt_abstract, param_sh, abstract,
      transform_non_params=lambda _: rep, is_leaf=masked)
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)


def frozen_shardings(objective: modes.Objective, mesh: Mesh) -> Any:
  return partitioning.param_shardings(objective.abstract_frozen(), mesh)


def jit_train_step(train_step: Callable, mesh: Mesh, state_sh: TrainState, frozen_sh: Any,
                   batch: dict) -> Callable:
  """jax.jit with explicit in/out shardings; the state is donated (updated in place)."""
  batch_sh = {k: partitioning.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  rep = partitioning.replicated(mesh)
  return jax.jit(train_step, in_shardings=(state_sh, frozen_sh, batch_sh),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))
