"""Evaluation through `seqio.Evaluator`: predict (decoding) and score (rank classification).

seqio calls the predict/score function once per task with that task's enumerated eval
dataset. A held-out task's rows share one fixed K-shot set, so the hypermodel generates its
parameters once per task (batch 1, broadcast to every query); rows with differing few-shot
inputs fall back to per-row generation.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from hypert5 import decoding
from hypert5.models import gisting, llama, t5
from hypert5.training import modes

if TYPE_CHECKING:  # imported where used: training and benchmarking run without TensorFlow
  import seqio

log = logging.getLogger(__name__)

HYPER_KEY = "hyper_encoder_input_tokens"


def _batches(ds, batch_size: int):
  """Yields (indices, features) numpy batches padded to `batch_size` rows."""
  import tensorflow as tf  # here, not at the top: training and benchmarking run without it
  # An evaluation reads each task's few examples once, from seqio's cache through the
  # converter's maps: tf.data's default graph optimisations gain nothing there and cost
  # ~40 ms each time an iterator is made (the demo's 32 held-out tasks evaluated in 20.7
  # instead of 21.6 s).
  options = tf.data.Options()
  options.experimental_optimization.apply_default_optimizations = False
  indices, rows = [], []
  for index, ex in ds.with_options(options).as_numpy_iterator():
    indices.append(index)
    rows.append(ex)
    if len(rows) == batch_size:
      yield _stack(indices, rows, batch_size)
      indices, rows = [], []
  if rows:
    yield _stack(indices, rows, batch_size)


def _stack(indices, rows, batch_size):
  feats = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  pad = batch_size - len(rows)
  feats = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in feats.items()}
  return indices, feats


class Predictor:
  """Jitted generation and scoring for one objective and its current parameters."""

  hyper_key = HYPER_KEY  # the batch feature holding the few-shot tokens

  def __init__(self, objective: modes.Objective, batch_size: int, max_decode_length: int,
               num_beams: int = 1):
    self.objective, self.batch_size = objective, batch_size
    self.max_decode_length, self.num_beams = max_decode_length, num_beams
    model = t5.T5(objective.t5)

    downstream = objective.downstream

    @jax.jit
    def generate(trainable, frozen, hyper_tokens):
      return objective.generate(trainable, frozen, {HYPER_KEY: hyper_tokens})

    @jax.jit
    def predict(trainable, frozen, peft, encoder_tokens):
      params = downstream(trainable, frozen)
      if num_beams > 1:
        return decoding.beam_search(model, params, encoder_tokens, max_decode_length,
                                    peft=peft, num_beams=num_beams)[0]
      return decoding.greedy(model, params, encoder_tokens, max_decode_length, peft=peft)

    @jax.jit
    def score(trainable, frozen, peft, batch):
      logits = model.apply({"params": downstream(trainable, frozen)},
                           batch["encoder_input_tokens"], batch["decoder_input_tokens"], peft)
      logp = jax.nn.log_softmax(logits)
      targets = batch["decoder_target_tokens"]
      tok = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
      return jnp.sum(tok * (targets > 0), axis=-1)

    self._generate, self._predict, self._score = generate, predict, score

  def peft_for(self, trainable, frozen, feats: dict, cache: dict) -> Any:
    """Generated parameters for a batch: once per task (batch 1) when all rows share their
    few-shot text, memoised in `cache` across the task's batches; else one per row."""
    if self.objective.mode != "hyper":
      return self.objective.generate(trainable, frozen, feats)
    hyper = feats[self.hyper_key]
    real = hyper[np.any(hyper != 0, axis=1)]
    if not (len(real) and (real == real[0]).all()):
      return self._generate(trainable, frozen, hyper)
    key = real[0].tobytes()
    if key not in cache:
      cache.clear()
      cache[key] = self._generate(trainable, frozen, real[:1])
    return cache[key]

  def predict_batch(self, trainable, frozen, peft, feats: dict) -> np.ndarray:
    """Generated tokens [b, max_decode_length] for one batch of model features."""
    return np.asarray(self._predict(trainable, frozen, peft, feats["encoder_input_tokens"]))

  def score_batch(self, trainable, frozen, peft, feats: dict) -> np.ndarray:
    """Summed target-token log-probabilities [b] for one batch of model features."""
    batch = {k: feats[k] for k in ("encoder_input_tokens", "decoder_input_tokens",
                                   "decoder_target_tokens")}
    return np.asarray(self._score(trainable, frozen, peft, batch))

  def predict_fn(self, trainable, frozen):
    def fn(ds, model_feature_shapes=None):
      out, cache = [], {}
      for indices, feats in _batches(ds, self.batch_size):
        peft = self.peft_for(trainable, frozen, feats, cache)
        tokens = self.predict_batch(trainable, frozen, peft, feats)
        out.extend((i, as_prediction(t, self.max_decode_length)) for i, t in zip(indices, tokens))
      return out
    return fn

  def score_fn(self, trainable, frozen):
    def fn(ds, model_feature_shapes=None):
      out, cache = [], {}
      for indices, feats in _batches(ds, self.batch_size):
        peft = self.peft_for(trainable, frozen, feats, cache)
        scores = self.score_batch(trainable, frozen, peft, feats)
        out.extend((i, float(s)) for i, s in zip(indices, scores))
      return out
    return fn


def _strip(tokens: np.ndarray) -> list[int]:
  tokens = list(tokens)
  if decoding.EOS_ID in tokens:
    tokens = tokens[:tokens.index(decoding.EOS_ID)]
  return [int(t) for t in tokens if t != 0]


def as_prediction(tokens: np.ndarray, length: int) -> list[int]:
  """Tokens up to EOS, padded with 0 to `length`: seqio stacks predictions into one array,
  so they must share a length (padding decodes to nothing)."""
  ids = _strip(tokens)
  return ids + [0] * (length - len(ids))


def evaluate(evaluator: seqio.Evaluator, predictor: Predictor, trainable, frozen, step: int,
             out_dir: str | None = None) -> dict[str, dict[str, float]]:
  """Runs every task of the evaluator; returns {task: metrics} plus "mean" over tasks."""
  future, _ = evaluator.evaluate(compute_metrics=True, step=step,
                                 predict_fn=predictor.predict_fn(trainable, frozen),
                                 score_fn=predictor.score_fn(trainable, frozen))
  results = {task: {k: float(getattr(v, "value", v)) for k, v in metrics.items()}
             for task, metrics in future.result().items()}
  keys = sorted({k for m in results.values() for k in m})
  results["mean"] = {k: float(np.mean([m[k] for m in results.values() if k in m]))
                     for k in keys}
  if out_dir and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"metrics_{step}.json"), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  log.info("eval step %d: %s", step, json.dumps(results["mean"]))
  return results


def make_evaluator(mixture: str, feature_converter, lengths: dict[str, int],
                   split: str = "validation", log_dir: str | None = None) -> seqio.Evaluator:
  import seqio  # here, not at the top: training and benchmarking run without TensorFlow
  loggers = (seqio.TensorBoardLogger, seqio.JSONLogger) if log_dir else ()
  return seqio.Evaluator(mixture, feature_converter, eval_split=split, sequence_length=lengths,
                         logger_cls=loggers, log_dir=log_dir, use_memory_cache=True)


# -- decoder-only (HyperLlama and its baselines) ------------------------------------------


@functools.partial(jax.jit, static_argnums=0)  # compiled once per objective and shape
def decoder_generate(objective: modes.DecoderObjective, trainable, frozen, hyper_tokens):
  """The parameters a decoder-only objective injects for few-shot tokens [b, Lh]."""
  return objective.generate(trainable, frozen, {"hyper_input_tokens": hyper_tokens})


class DecoderPredictor(Predictor):
  """Greedy generation and scoring for a `modes.DecoderObjective` on
  DecoderOnlyFeatureConverter batches.

  A row's prompt is `decoder_input_tokens` up to its first target (bos + inputs, with the
  few-shot text in front in the in-context baseline); every token after it is zeroed, so
  generation never sees the targets. Decoding is llama.generate (KV cache) with the
  injected parameters of the mode: HyperLlama's gist prefix (generated once per task, as
  in Predictor.peft_for), a tuned prefix or LoRA, or none (`full`). Greedy only.
  `prompt_length` is the static prompt width (inputs + 1, plus hyper_inputs in context).
  """

  hyper_key = "hyper_input_tokens"

  def __init__(self, objective: modes.DecoderObjective, batch_size: int,
               max_decode_length: int, prompt_length: int, eos_id: int):
    self.objective, self.batch_size = objective, batch_size
    self.max_decode_length, self.num_beams = max_decode_length, 1
    self.prompt_length, self.eos_id = prompt_length, eos_id
    cfg = objective.llama

    downstream = objective.downstream

    def generate(trainable, frozen, hyper_tokens):
      return decoder_generate(objective, trainable, frozen, hyper_tokens)

    def predict(trainable, frozen, peft, prompt, lengths):  # llama.generate is jitted
      return llama.generate(cfg, downstream(trainable, frozen), prompt, lengths,
                            max_decode_length, peft, eos_id=eos_id)

    @jax.jit
    def score(trainable, frozen, peft, batch):
      logits = gisting.downstream_logits(cfg, downstream(trainable, frozen),
                                         batch["decoder_input_tokens"], peft)
      logp = jax.nn.log_softmax(logits)
      tok = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
      return jnp.sum(tok * batch["decoder_loss_weights"], axis=-1)

    self._generate, self._predict, self._score = generate, predict, score

  def prompts(self, feats: dict) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens [b, prompt_length] zero after each row's prompt, prompt lengths [b]).
    Rows without a target (batch padding) get a 1-token prompt."""
    weights = np.asarray(feats["decoder_loss_weights"]) > 0
    lengths = np.where(weights.any(axis=1), weights.argmax(axis=1) + 1, 1)
    lengths = np.minimum(lengths, self.prompt_length).astype(np.int32)
    tokens = np.asarray(feats["decoder_input_tokens"])[:, :self.prompt_length]
    keep = np.arange(tokens.shape[1])[None] < lengths[:, None]
    return np.where(keep, tokens, 0).astype(np.int32), lengths

  def decode(self, trainable, frozen, peft, prompt, lengths) -> np.ndarray:
    """Generated tokens [b, max_decode_length], 0 from each row's eos on."""
    tokens = np.asarray(self._predict(trainable, frozen, peft, prompt, lengths))
    return np.where(np.cumsum(tokens == self.eos_id, axis=1) > 0, 0, tokens)

  def predict_batch(self, trainable, frozen, peft, feats: dict) -> np.ndarray:
    return self.decode(trainable, frozen, peft, *self.prompts(feats))

  def score_batch(self, trainable, frozen, peft, feats: dict) -> np.ndarray:
    batch = {k: feats[k] for k in ("decoder_input_tokens", "decoder_target_tokens",
                                   "decoder_loss_weights")}
    return np.asarray(self._score(trainable, frozen, peft, batch))
