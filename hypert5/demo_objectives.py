"""The demo's two training features that the library's modes lack, kept out of modes.py.

Prototypes showed that a hypermodel over a downstream T5 that never saw a prefix learns
almost nothing at demo scale. What worked:

- A *prefix-friendly* downstream (`PrefixFriendly`): trained on the oracle layout
  (description + query), where half of each batch reads the description as ordinary
  tokens and the other half reads the bare query with the description turned into a
  key/value prefix by a small reparameterisation head (HyperT5's `PrefixHead` applied to
  the description's token embeddings). The T5 learns to read prefixes; the head learns
  the map from "meaning" vectors to prefixes.
- A hypermodel whose prefix head starts as that head (`hyper_init_from_reparam`), so its
  decoder only has to learn to place description-like vectors on its queries.

`train` is runs.train's loop with a caller-built (trainable, frozen): Trainer, metrics
logger and Orbax checkpoint are the library's, so `hypert5 eval` / `export` read the
result like any other run.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from hypert5 import runs
from hypert5.models import hypermodel, t5
from hypert5.training import (checkpoints, flops, losses, model_io, optimizers,
                              partitioning, trainer as trainer_lib)

log = logging.getLogger("hypert5")

REPARAM_FILE = "reparam.msgpack"


# -- data: oracle rows -> (description, bare query) ---------------------------------------


def split_oracle(tokens: np.ndarray, marker_min: int, desc_len: int,
                 query_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Oracle inputs `description <m0> query <m1> EOS` -> (description [b, desc_len],
  query + EOS [b, query_len]), the query laid out as the plain/hyper tasks lay it out."""
  desc = np.zeros((len(tokens), desc_len), np.int32)
  query = np.zeros((len(tokens), query_len), np.int32)
  for i, row in enumerate(tokens):
    marks = np.flatnonzero(row >= marker_min)
    if len(marks) < 2:
      raise ValueError(f"oracle row {i} has no <description> <m> query <m> layout: {row}")
    d = row[:marks[0]][:desc_len]
    q = list(row[marks[0] + 1:marks[1]][:query_len - 1]) + [1]
    desc[i, :len(d)], query[i, :len(q)] = d, q
  return desc, query


def oracle_batches(batches: Iterator[dict], marker_min: int, desc_len: int,
                   query_len: int) -> Iterator[dict]:
  for batch in batches:
    desc, query = split_oracle(batch["encoder_input_tokens"], marker_min, desc_len, query_len)
    yield {**batch, "description_tokens": desc, "query_tokens": query}


def marker_min(exp: runs.Experiment) -> int:
  """The first sentinel id: few-shot markers are sentinels, text tokens lie below."""
  vocab = runs._provider(exp.mixture).output_features["inputs"].vocabulary
  return vocab.vocab_size - vocab.extra_ids


# -- the prefix-friendly downstream objective --------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrefixFriendly:
  """Trainable {"t5", "reparam"}; loss over the description-as-tokens half and the
  description-as-prefix half of each batch (the Trainer sees mode "full": nothing frozen)."""

  t5: Any
  hyper: hypermodel.HyperT5Config  # prefix length / kinds / head width of the reparam head
  mode: str = "full"
  z_loss: float = 0.0

  def init(self, rng: jax.Array, downstream_params: dict) -> tuple[dict, dict]:
    dummy = jnp.zeros((1, self.hyper.prefix_length, self.t5.d_model), jnp.float32)
    reparam = nn.unbox(hypermodel.PrefixHead(self.hyper).init(rng, dummy)["params"])
    return {"t5": downstream_params, "reparam": reparam}, {}

  def abstract_trainable(self) -> Any:
    dummy = jax.ShapeDtypeStruct((1, self.hyper.prefix_length, self.t5.d_model), jnp.float32)
    reparam = jax.eval_shape(hypermodel.PrefixHead(self.hyper).init, jax.random.key(0), dummy)
    return {"t5": t5.abstract_params(self.t5), "reparam": reparam["params"]}

  def prefix(self, trainable: dict, description_tokens: jax.Array):
    embedded = jnp.take(trainable["t5"]["token_embedder"]["embedding"], description_tokens, 0)
    return hypermodel.PrefixHead(self.hyper).apply({"params": trainable["reparam"]}, embedded)

  def loss(self, trainable, frozen, batch, rng=None, enable_dropout=False):
    half = batch["encoder_input_tokens"].shape[0] // 2
    model = t5.T5(self.t5)
    params = {"params": trainable["t5"]}
    dec, tgt = batch["decoder_input_tokens"], batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (tgt > 0) if weights is None else weights
    as_text = model.apply(params, batch["encoder_input_tokens"][:half], dec[:half])
    prefix = self.prefix(trainable, batch["description_tokens"][half:])
    as_prefix = model.apply(params, batch["query_tokens"][half:], dec[half:], prefix)
    l1, w1 = losses.cross_entropy(as_text, tgt[:half], weights[:half], self.z_loss)
    l2, w2 = losses.cross_entropy(as_prefix, tgt[half:], weights[half:], self.z_loss)
    return l1 + l2, w1 + w2


# -- hypermodel initialisation ------------------------------------------------------------


def hyper_init_from_reparam(trainable: dict, reparam_path: str) -> dict:
  """HyperT5-Prefix parameters with the generator head copied from the reparam head."""
  with open(reparam_path, "rb") as f:
    reparam = flax.serialization.msgpack_restore(f.read())
  if jax.tree.structure(reparam) != jax.tree.structure(trainable["head"]):
    raise ValueError(f"{reparam_path}: the reparameterisation head does not match "
                     "HyperT5's prefix head; use the same prefix_length and head_hidden")
  return {**trainable, "head": jax.tree.map(jnp.asarray, reparam)}


# -- the loop ----------------------------------------------------------------------------


def train(exp: runs.Experiment, objective, trainable: Any, frozen: Any,
          batches: Iterator[dict], is_new_param=None):
  """Trains from scratch in exp.model_dir with the library's Trainer and hooks; saves a
  final checkpoint. Returns the final TrainState."""
  runs._write_config(exp.model_dir)
  cfg = exp.trainer
  mesh = partitioning.make_mesh(exp.mesh)
  opt = optimizers.make_optimizer(exp.optimizer, is_new_param)
  first = next(batches)
  trainer = trainer_lib.Trainer(objective, opt, cfg, mesh, first)
  state = trainer.init_state(trainable)
  frozen = trainer.place_frozen(frozen)
  lengths, hyper = exp.task_feature_lengths, getattr(objective, "hyper", None)
  is_hyper = objective.mode == "hyper"
  step_flops = flops.step_flops(
      objective.mode, objective.t5, exp.batch_size, lengths.get("inputs", 0),
      lengths.get("targets", 0), lengths.get("hyper_inputs", 0),
      hyper.num_queries if is_hyper else 0,
      hyper.prefix_length if is_hyper and hyper.peft_type == "prefix" else 0)
  checkpointer = checkpoints.Checkpointer(exp.model_dir, cfg.keep_checkpoints,
                                          cfg.checkpoint_every, async_save=False)
  hooks = [trainer_lib.MetricsLogger(exp.model_dir, cfg.log_every, step_flops, cfg.num_steps),
           trainer_lib.CheckpointHook(checkpointer)]
  return trainer.train(state, frozen, runs._chain([first], batches), hooks)


def train_prefix_friendly(exp: runs.Experiment) -> dict:
  """Stage 1 of the demo: trains the prefix-friendly downstream on exp.mixture (an oracle
  mixture); writes MODEL_DIR/hf (the T5) and MODEL_DIR/reparam.msgpack (the head)."""
  hyper = exp.objective.hyper
  if hyper is None or hyper.peft_type != "prefix":
    raise ValueError("the prefix-friendly downstream needs experiment.hyper, a prefix "
                     "HyperT5Config (its prefix_length, kinds and head width)")
  obj = PrefixFriendly(exp.objective.t5, hyper)
  downstream = runs.load_downstream(exp)
  trainable, frozen = obj.init(jax.random.key(exp.trainer.seed + 1), downstream)
  batches = oracle_batches(runs.train_batches(exp), marker_min(exp), hyper.prefix_length,
                           exp.task_feature_lengths["targets"])
  state = train(exp, obj, trainable, frozen, batches)
  params = jax.device_get(state.params)
  model_io.save_hf_t5(obj.t5, params["t5"], os.path.join(exp.model_dir, "hf"), overwrite=True)
  with open(os.path.join(exp.model_dir, REPARAM_FILE), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(params["reparam"]))
  return params


def train_hyper(exp: runs.Experiment, reparam_path: str | None = None):
  """HyperT5 training as `hypert5 train` does it, with the prefix head optionally
  initialised from the downstream's reparameterisation head."""
  obj = exp.objective
  downstream = runs.load_downstream(exp)
  trainable, frozen = obj.init(jax.random.key(exp.trainer.seed + 1), downstream)
  if reparam_path and obj.hyper.peft_type == "prefix":
    trainable = hyper_init_from_reparam(trainable, reparam_path)
  checkpoints.write_downstream_reference(exp.model_dir, {
      "downstream_checkpoint": exp.downstream_checkpoint, "mode": obj.mode,
      "note": "frozen downstream; referenced here, not re-saved in checkpoints/"})
  return train(exp, obj, trainable, frozen, runs.train_batches(exp),
               optimizers.hyper_new_params)
