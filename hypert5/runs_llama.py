"""Run modes for decoder-only models: HyperLlama (gisting) and its baselines over a frozen
Llama, behind the same `hypert5 train | eval | infer | export | bench` program.

runs.experiment() builds a `modes.DecoderObjective` when `experiment.model` is a
LlamaConfig (gin/models/llama_*.gin) and each run mode in runs.py hands such an experiment
to the function of the same name here. What differs from the T5 path: the downstream
checkpoint is a Hugging Face LlamaForCausalLM directory, batches come from
`DecoderOnlyFeatureConverter`, evaluation decodes with `evaluation.DecoderPredictor`
(greedy, KV cache, the generated prefix injected), FLOPs are counted for a Llama, and
export writes a PEFT *prefix-tuning* adapter. The trainer, checkpoints, metrics logger,
seqio evaluator, MODEL_DIR layout and gin macros are shared with runs.py.

Training modes (experiment.mode; modes.DecoderObjective):
  hyper    HyperLlama: gist embeddings + hyper-stream LoRA train, the Llama is frozen
  full     the Llama itself; on hyper tasks the few-shot examples go in its context (the
           few-shot-in-context baseline)
  prefix   one task's prefix (length = the gist count) from random values or from
           experiment.initial_peft, a HyperLlama prefix written by `export` (hyper-init)
  lora     one LoRA (HyperLlama's rank and targets) on the frozen Llama

Where the few-shot text goes is `decoder_only.few_shot`: None (default) picks "hyper" in
hyper mode, else "in_context" when the task has few-shot text and "none" when it has not.
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Iterator

import gin
import jax
import numpy as np

from hypert5 import runs
from hypert5.data.names import FEW_SHOT, HYPER_INPUT_TOKENS, HYPER_INPUTS
from hypert5.models import gisting, llama, peft as peft_lib
from hypert5.training import (checkpoints, evaluation, flops, llama_io, model_io, modes,
                              optimizers, partitioning, peft_io, trainer as trainer_lib,
                              train_step)
from hypert5.usage import UsageError, required as _required

if TYPE_CHECKING:  # imported where used: the run code loads without TensorFlow
  from hypert5.data.decoder_only import DecoderOnlyFeatureConverter

log = logging.getLogger("hypert5")

MODEL_KEYS = (HYPER_INPUT_TOKENS, "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights")
# Architecture fields a downstream checkpoint must agree on (dtypes, scan and remat are
# run settings; token ids and max positions are metadata).
_ARCH_FIELDS = ("vocab_size", "d_model", "d_ff", "num_heads", "num_kv_heads", "head_dim",
                "num_layers", "rope_theta", "rope_scaling", "tie_embeddings", "layer_norm_eps")


@gin.configurable
def decoder_only(few_shot: str | None = None, bos_id: int = 0) -> tuple[str | None, int]:
  """Decoder-only data settings: where the few-shot text goes ("hyper", "in_context",
  "none"; None picks by mode and task, see the module docstring) and the token in front of
  each stream (0 as t5x; a Llama tokenizer's <s> is 1)."""
  if few_shot is not None and few_shot not in FEW_SHOT:
    raise UsageError(f"decoder_only.few_shot={few_shot!r}; expected one of {FEW_SHOT} or None")
  return few_shot, bos_id


# -- the objective -----------------------------------------------------------------------


def is_decoder_only(model: Any, hyper: Any = None) -> bool:
  """Whether experiment.model / experiment.hyper name the decoder-only family."""
  return isinstance(model, llama.LlamaConfig) or isinstance(hyper, gisting.HyperLlamaConfig)


def objective(mode: str, model: Any, hyper: Any, z_loss: float) -> modes.DecoderObjective:
  """The DecoderObjective for experiment(); mixed families are a UsageError."""
  if not isinstance(model, llama.LlamaConfig):
    raise UsageError(f"experiment.hyper is a HyperLlamaConfig but experiment.model is a "
                     f"{type(model).__name__}; include a models/llama_*.gin file")
  if hyper is not None and not isinstance(hyper, gisting.HyperLlamaConfig):
    raise UsageError(f"experiment.model is a LlamaConfig but experiment.hyper is a "
                     f"{type(hyper).__name__}; include models/hyper_llama.gin instead of "
                     "a models/hyper_*.gin file for T5")
  if hyper is not None and hyper.llama != model:
    raise UsageError("experiment.hyper.llama differs from experiment.model; bind "
                     "hypert5.HyperLlamaConfig.llama = %LLAMA")
  return modes.DecoderObjective(mode, model, hyper, z_loss)


def handles(exp: runs.Experiment) -> bool:
  return isinstance(exp.objective, modes.DecoderObjective)


# -- data --------------------------------------------------------------------------------


def few_shot_for(exp: runs.Experiment, provider) -> str:
  """Where this task's few-shot text goes (decoder_only.few_shot, or picked)."""
  few_shot, _ = decoder_only()
  has_few_shot = HYPER_INPUTS in provider.output_features
  if few_shot is None:
    few_shot = ("hyper" if exp.objective.mode == "hyper" else
                "in_context" if has_few_shot else "none")
  if (few_shot == "hyper") != (exp.objective.mode == "hyper"):
    raise UsageError(f"decoder_only.few_shot={few_shot!r} with experiment.mode="
                     f"{exp.objective.mode!r}: the hyper stream exists in hyper mode only")
  if few_shot != "none" and not has_few_shot:
    raise UsageError(f"{provider.name}: has no few-shot text (hyper_inputs) for "
                     f"few_shot={few_shot!r}; use a hyper-mode task (e.g. synthetic_train, "
                     "not synthetic_plain_train) or decoder_only.few_shot='none'")
  return few_shot


def converter(exp: runs.Experiment, name: str) -> DecoderOnlyFeatureConverter:
  """The feature converter for task or mixture `name`, after checking its vocabulary fits
  the Llama's embedding (an id past it would be clamped silently, not caught)."""
  from hypert5.data import registry
  from hypert5.data.decoder_only import DecoderOnlyFeatureConverter
  provider = runs._provider(name)
  if registry.queries_per_task(provider) > 1:
    raise UsageError(f"{name}: its rows hold several queries (queries_per_task), which "
                     "HyperT5 training shares a forward over; HyperLlama reads one query "
                     "per row: register the tasks with queries_per_task=1")
  vocab = provider.output_features["targets"].vocabulary
  if vocab.vocab_size > exp.objective.llama.vocab_size:
    raise UsageError(f"{name}: its vocabulary has {vocab.vocab_size} ids but the Llama embeds "
                     f"{exp.objective.llama.vocab_size}; register the tasks with a vocabulary "
                     "that fits (e.g. the byte vocabulary, or the model's own tokenizer)")
  _, bos_id = decoder_only()
  return DecoderOnlyFeatureConverter(few_shot_for(exp, provider), bos_id=bos_id)


def stream_length(exp: runs.Experiment, few_shot: str) -> int:
  lengths = exp.task_feature_lengths
  extra = lengths[HYPER_INPUTS] if few_shot == "in_context" else 0
  return lengths["inputs"] + lengths["targets"] + extra


def batch_shapes(exp: runs.Experiment) -> dict[str, tuple[int, int]]:
  """Shapes of a training batch ({feature: (batch, length)}) for MIXTURE's layout."""
  few_shot = few_shot_for(exp, runs._provider(exp.mixture))
  b, n = exp.batch_size, stream_length(exp, few_shot)
  shapes = {k: (b, n) for k in MODEL_KEYS[1:]}
  if few_shot == "hyper":
    shapes[HYPER_INPUT_TOKENS] = (b, exp.task_feature_lengths[HYPER_INPUTS])
  return shapes


def train_batches(exp: runs.Experiment, start: int = 0) -> Iterator[dict]:
  """runs.train_batches for DecoderOnlyFeatureConverter batches."""
  from hypert5.data import performance
  ds = runs.training_dataset(exp, converter(exp, exp.mixture))
  for batch in performance.numpy_batches(ds.skip(start)):
    yield {k: v for k, v in batch.items() if k in MODEL_KEYS}


# -- models ------------------------------------------------------------------------------


def load_downstream(exp: runs.Experiment) -> dict:
  """The Llama from experiment.downstream_checkpoint (a Hugging Face LlamaForCausalLM
  directory), or random weights without one."""
  cfg = exp.objective.llama
  if exp.downstream_checkpoint is None:
    log.warning("no downstream_checkpoint: the downstream Llama is randomly initialised")
    return llama.init_params(cfg, jax.random.key(exp.trainer.seed))
  try:
    loaded, params = llama_io.load_llama(exp.downstream_checkpoint, dtype=cfg.param_dtype,
                                         config_overrides={"scan_layers": cfg.scan_layers})
  except model_io.CheckpointError as e:
    raise UsageError(str(e)) from e
  differ = {f: (getattr(loaded, f), getattr(cfg, f)) for f in _ARCH_FIELDS
            if getattr(loaded, f) != getattr(cfg, f)}
  if differ:
    raise UsageError(f"{exp.downstream_checkpoint}: its architecture differs from the "
                     f"configured Llama (field: (checkpoint, configured)) {differ}; bind "
                     "experiment.model to the checkpoint's size")
  return params


def optimizer(exp: runs.Experiment):
  # Every trainable decoder-only parameter is new (gist, LoRA, prefix) or pretrained (full):
  # no per-group rate multiplier.
  return optimizers.make_optimizer(exp.optimizer)


def _evaluator_and_predictor(exp: runs.Experiment):
  name = exp.eval_mixture or exp.mixture
  conv = converter(exp, name)
  lengths = exp.task_feature_lengths
  if exp.num_beams > 1:
    raise UsageError("decoder-only evaluation decodes greedily; set experiment.num_beams=1")
  evaluator = evaluation.make_evaluator(name, conv, lengths, exp.eval_split,
                                        log_dir=os.path.join(exp.model_dir, "eval"))
  eos = runs._provider(name).output_features["targets"].vocabulary.eos_id
  prompt = stream_length(exp, conv.few_shot) - lengths["targets"] + 1
  predictor = evaluation.DecoderPredictor(exp.objective, exp.eval_batch_size,
                                          lengths["targets"], prompt, eos)
  return evaluator, predictor


def _step_flops(exp: runs.Experiment, shapes: dict) -> float:
  obj = exp.objective
  hyper_len = shapes.get(HYPER_INPUT_TOKENS, (0, 0))[1]
  return flops.decoder_step_flops(obj.mode, obj.llama, exp.batch_size,
                                  shapes["decoder_input_tokens"][1], hyper_len,
                                  obj.hyper.num_gist if obj.hyper else 0)


# -- run modes ---------------------------------------------------------------------------


def train(exp: runs.Experiment, export_hf_at_end: bool = True) -> train_step.TrainState:
  """runs.train for a decoder-only experiment; in `full` mode the final Llama is written as
  a Hugging Face directory MODEL_DIR/hf."""
  runs._write_config(exp.model_dir)
  obj, cfg = exp.objective, exp.trainer
  shapes = batch_shapes(exp)  # checks the data layout before anything loads
  peft = runs.initial_peft(exp)
  downstream = load_downstream(exp)
  trainable, frozen = obj.init(jax.random.key(cfg.seed + 1), downstream, peft)
  if obj.mode != "full":
    checkpoints.write_downstream_reference(exp.model_dir, {
        "downstream_checkpoint": exp.downstream_checkpoint, "mode": obj.mode,
        "model": "llama", "note": "frozen downstream; referenced here, not re-saved in "
                                  "checkpoints/"})
  mesh = partitioning.make_mesh(exp.mesh)
  checkpointer = checkpoints.Checkpointer(exp.model_dir, cfg.keep_checkpoints,
                                          cfg.checkpoint_every, cfg.async_checkpoints)
  start = 0
  batches = train_batches(exp)
  first = next(batches)
  trainer = trainer_lib.Trainer(obj, optimizer(exp), cfg, mesh, first)
  state = trainer.init_state(trainable)
  try:
    if checkpointer.latest_step() is not None:
      state, meta = checkpointer.restore(state)
      start = int(meta["batches"])
      batches = train_batches(exp, start=start)
    else:
      batches = runs._chain([first], batches)
      if exp.init_from:
        state = state.replace(params=checkpoints.restore_params_from(exp.init_from, state))
        log.info("initialised the trainable parameters from %s", exp.init_from)
  except checkpoints.CheckpointMismatchError as e:
    raise UsageError(str(e)) from e
  trainer.batches_consumed = start
  frozen = trainer.place_frozen(frozen)

  hooks: list[trainer_lib.Hook] = [
      trainer_lib.MetricsLogger(exp.model_dir, cfg.log_every, _step_flops(exp, shapes),
                                cfg.num_steps),
      trainer_lib.CheckpointHook(checkpointer)]
  if cfg.eval_every and exp.eval_mixture:
    evaluator, predictor = _evaluator_and_predictor(exp)
    hooks.append(trainer_lib.PeriodicHook(cfg.eval_every, lambda tr, st: evaluation.evaluate(
        evaluator, predictor, st.params, frozen, int(st.step),
        os.path.join(exp.model_dir, "eval"))))
  state = trainer.train(state, frozen, batches, hooks)
  if obj.mode == "full" and export_hf_at_end and jax.process_index() == 0:
    llama_io.save_hf_llama(obj.llama, jax.device_get(state.params),
                           os.path.join(exp.model_dir, "hf"), overwrite=True)
  return state


def evaluate(exp: runs.Experiment) -> dict:
  """Evaluates MODEL_DIR's latest checkpoint on EVAL_MIXTURE through seqio."""
  trainable, frozen, step = runs.restore_trainable(exp, optimizer(exp), load_downstream)
  evaluator, predictor = _evaluator_and_predictor(exp)
  return evaluation.evaluate(evaluator, predictor, trainable, frozen, step,
                             os.path.join(exp.model_dir, "eval"))


def generate_for_examples(exp: runs.Experiment, examples_file: str):
  """(injected parameters [batch 1] or None, trainable, frozen) for the few-shot examples
  in a JSONL: HyperLlama's prefix in hyper mode, the tuned prefix / LoRA otherwise."""
  trainable, frozen, _ = runs.restore_trainable(exp, optimizer(exp), load_downstream)
  obj = exp.objective
  if obj.mode != "hyper":
    return obj.generate(trainable, frozen, {}), trainable, frozen
  tokens = runs._encode_few_shot(exp, examples_file)
  return evaluation.decoder_generate(obj, trainable, frozen, tokens[None]), trainable, frozen


def infer(exp: runs.Experiment, examples_file: str, queries_file: str,
          output_file: str) -> list[str]:
  """runs.infer: outputs for each query of one task given its few-shot examples (through
  the gist prefix in hyper mode, in the context in the in-context baseline)."""
  examples_file = _required(examples_file, "infer.examples_file")
  peft, trainable, frozen = generate_for_examples(exp, examples_file)
  provider = runs._provider(exp.mixture)
  vocab = provider.output_features["targets"].vocabulary
  few_shot = few_shot_for(exp, provider)
  context = []
  if few_shot == "in_context":
    tokens = runs._encode_few_shot(exp, examples_file)
    context = [int(t) for t in tokens if t != 0]
  queries = runs._read_jsonl(_required(queries_file, "infer.queries_file"), ("input",))
  lengths = exp.task_feature_lengths
  prompt_len = stream_length(exp, few_shot) - lengths["targets"] + 1
  _, bos_id = decoder_only()
  # Batches of eval_batch_size rows (the last one padded): one compiled shape, as in eval.
  b = exp.eval_batch_size
  rows = -(-len(queries) // b) * b
  prompt = np.zeros((rows, prompt_len), np.int32)
  plen = np.ones((rows,), np.int32)
  for i, q in enumerate(queries):
    ids = [bos_id] + context + list(vocab.encode(q["input"]))[:lengths["inputs"] - 1] + [
        vocab.eos_id]
    prompt[i, :len(ids)], plen[i] = ids, len(ids)
  predictor = evaluation.DecoderPredictor(exp.objective, b, lengths["targets"], prompt_len,
                                          vocab.eos_id)
  tokens = np.concatenate([predictor.decode(trainable, frozen, peft, prompt[i:i + b],
                                            plen[i:i + b]) for i in range(0, rows, b)])
  outputs = [vocab.decode(evaluation._strip(t)) for t in tokens[:len(queries)]]
  output_file = _required(output_file, "infer.output_file")
  os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with open(output_file, "w") as f:
    for q, o in zip(queries, outputs):
      f.write(json.dumps({"input": q["input"], "output": o}) + "\n")
  return outputs


def export(exp: runs.Experiment, examples_file: str, output_dir: str,
           formats: tuple[str, ...]) -> dict:
  """One task's injected parameters: an Orbax checkpoint and a safetensors file (our
  convention: prefix keys un-rotated); for a prefix a PEFT prefix-tuning adapter for
  LlamaForCausalLM (keys rotated to positions 0..G-1, as PEFT injects them; see
  training/llama_io.py); for a LoRA a merged Hugging Face Llama directory."""
  peft, trainable, frozen = generate_for_examples(
      exp, _required(examples_file, "export.examples_file"))
  if peft is None:
    raise UsageError("export needs a mode that injects parameters (hyper, prefix, lora)")
  peft = jax.device_get(peft)
  output_dir = _required(output_dir, "export.output_dir")
  cfg = exp.objective.llama
  written = {}
  for fmt in formats:
    if fmt == "orbax":
      written[fmt] = peft_io.save_peft_orbax(peft, os.path.join(output_dir, "orbax"))
    elif fmt == "safetensors":
      written[fmt] = peft_io.save_peft_safetensors(peft, os.path.join(output_dir,
                                                                      "peft.safetensors"))
    elif fmt == "peft" and isinstance(peft, peft_lib.Prefix):
      written[fmt] = os.path.join(output_dir, "peft_adapter")
      llama_io.save_peft_prefix(peft, cfg, written[fmt],
                                base_model_name_or_path=exp.downstream_checkpoint)
    elif fmt == "merged" and isinstance(peft, peft_lib.LoRA):
      written[fmt] = os.path.join(output_dir, "merged_hf")
      base = jax.device_get(frozen)
      if cfg.scan_layers:
        base = llama_io.unstack_layers(base, cfg)
      llama_io.save_hf_llama(cfg.replace(scan_layers=False),
                             peft_lib.merge_lora(base, peft, cfg), written[fmt], overwrite=True)
    elif fmt in ("peft", "merged"):
      log.info("export: %s is not written for a Llama %s (peft: prefixes; merged: LoRA)",
               fmt, type(peft).__name__)
    else:
      raise UsageError(f"unknown export format {fmt!r}; use orbax, safetensors, peft, merged")
  log.info("export: wrote %s", json.dumps(written))
  return written


def bench(exp: runs.Experiment, steps: int, warmup: int, output_file: str | None,
          input_counts: tuple[int, int], profile: tuple[str | None, int]) -> dict:
  """runs.bench: times training steps on random tokens at the configured Llama size."""
  obj = exp.objective
  shapes = batch_shapes(exp)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(2, obj.llama.vocab_size, s).astype(np.int32)
           for k, s in shapes.items()}
  batch["decoder_loss_weights"] = np.ones(shapes["decoder_loss_weights"], np.int32)
  tokens = sum(int(np.prod(s)) for k, s in shapes.items() if k != "decoder_target_tokens"
               and k != "decoder_loss_weights")
  downstream = llama.init_params(obj.llama, jax.random.key(0))
  return runs.time_train_steps(exp, optimizer(exp), downstream, batch, steps, warmup,
                               _step_flops(exp, shapes), tokens, output_file, input_counts,
                               profile, model="llama",
                               lengths={k: s[1] for k, s in shapes.items()})
