"""Run modes, configured by gin: train, eval, infer, export, bench.

`experiment(...)` gathers what every mode shares (MODEL_DIR, model, training mode, data,
optimizer, trainer, mesh); each mode function adds its own few settings. This is the edge
of the program: gin is imported here and in main.py only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Iterator

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from hypert5.usage import UsageError, required as _required
from hypert5 import runs_llama  # decoder-only (HyperLlama) experiments run there
from hypert5.models import gisting, hypermodel, llama, peft as peft_lib, t5
from hypert5.models.configs import T5Config
from hypert5.training import (checkpoints, evaluation, flops, model_io, modes, optimizers,
                              partitioning, peft_io, trainer as trainer_lib)

log = logging.getLogger("hypert5")

MODEL_KEYS = ("hyper_encoder_input_tokens", "encoder_input_tokens", "decoder_input_tokens",
              "decoder_target_tokens", "decoder_loss_weights")


@dataclasses.dataclass
class Experiment:
  model_dir: str
  objective: modes.Objective | modes.DecoderObjective
  mixture: str
  task_feature_lengths: dict
  batch_size: int
  optimizer: optimizers.OptimizerConfig
  trainer: trainer_lib.TrainerConfig
  mesh: partitioning.MeshConfig
  downstream_checkpoint: str | None
  initial_peft: str | None
  eval_mixture: str | None
  eval_split: str
  eval_batch_size: int
  num_beams: int
  init_from: str | None
  init_head_from: str | None = None
  description_length: int | None = None
  shuffle_buffer_size: int | None = None

  @property
  def description_tokens(self) -> int:
    """peft_friendly: how many tokens of each description its readers read; by default the
    oracle inputs' length, which no description can exceed."""
    return self.description_length or self.task_feature_lengths["inputs"]


@gin.configurable
def experiment(model_dir: str = gin.REQUIRED, mode: str = "hyper",
               model: T5Config | llama.LlamaConfig = gin.REQUIRED,
               hyper: hypermodel.HyperT5Config | gisting.HyperLlamaConfig | None = None,
               downstream_checkpoint: str | None = None, initial_peft: str | None = None,
               mixture: str = gin.REQUIRED, task_feature_lengths: dict = gin.REQUIRED,
               batch_size: int = 32,
               optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
               trainer: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
               mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
               eval_mixture: str | None = None, eval_split: str = "validation",
               eval_batch_size: int = 32, num_beams: int = 1, z_loss: float = 0.0,
               text_fraction: float = 0.5,
               init_from: str | None = None, init_head_from: str | None = None,
               description_length: int | None = None,
               shuffle_buffer_size: int | None = None,
               task_registrations: Any = ()) -> Experiment:
  """Everything a run needs. `model` is a T5Config (with `hyper` a HyperT5Config) or a
  LlamaConfig (with a HyperLlamaConfig: runs_llama.py runs those). `downstream_checkpoint`
  is a Hugging Face or T5X directory (hypert5.load_t5; a Llama: hypert5.load_llama);
  `initial_peft` a safetensors file written by `hypert5 export` (the hyper-init for
  prefix/LoRA tuning); `init_from` another run's MODEL_DIR whose trainable parameters this
  run starts from (stage 2 after hyperpretraining); `init_head_from` a peft_friendly
  run's MODEL_DIR whose description reader (queries and head) HyperT5 starts as.
  `description_length` (peft_friendly) caps the description tokens its readers read (default:
  the oracle inputs' length); a longer description is an error, never silently cut.
  `text_fraction` (peft_friendly) is the share of each batch that reads the description as
  text; the description readers share the rest.
  `shuffle_buffer_size` sets every training task's shuffle buffer (examples per task, per
  host; default: each task's own, seqio's 1,000): lower it for mixtures of many tasks.
  `task_registrations` are configured
  register functions (`[@tasks.sni.register]` in a gin file), called here: gin cannot call a
  function while parsing, and directory-based tasks must exist before MIXTURE is looked up."""
  model_dir = _required(model_dir, "MODEL_DIR")
  mixture = _required(mixture, "MIXTURE")
  for value, macro in ((downstream_checkpoint, "DOWNSTREAM_CHECKPOINT"),
                       (initial_peft, "INITIAL_PEFT")):
    if value is gin.REQUIRED:  # an experiment file made it required; None stays allowed
      _required(value, macro)
  _register_tasks(task_registrations)
  model = _required(model, "experiment.model")
  if shuffle_buffer_size is not None and shuffle_buffer_size < 1:
    raise UsageError(f"experiment.shuffle_buffer_size={shuffle_buffer_size}: expected a "
                     "positive number of examples per task, or None for each task's own")
  try:
    objective = (runs_llama.objective(mode, model, hyper, z_loss)
                 if runs_llama.is_decoder_only(model, hyper) else
                 modes.Objective(mode, model, hyper, z_loss, text_fraction))
  except ValueError as e:
    raise UsageError(str(e)) from e
  return Experiment(model_dir, objective, mixture, dict(task_feature_lengths), batch_size,
                    optimizer, trainer, mesh, downstream_checkpoint, initial_peft,
                    eval_mixture, eval_split, eval_batch_size, num_beams, init_from,
                    init_head_from, description_length, shuffle_buffer_size)


def _register_tasks(registrations) -> None:
  """Calls each configured register function; a required macro left unset or a bad data
  directory is a UsageError (one line), not a traceback from inside the function."""
  from hypert5.data.errors import DataError
  for register in registrations:
    if not callable(register):  # an `@fn()` reference: gin has called it already
      continue
    for param, value in gin.get_bindings(register).items():
      if value is gin.REQUIRED:
        selector = getattr(gin.get_bindings(register, resolve_references=False)[param],
                           "scoped_selector", "")
        name = (selector.split("/")[0] if selector.endswith("/gin.macro") else
                f"{register.__module__}.{register.__name__}.{param}")
        raise UsageError(f"{name} is required by {register.__module__}.{register.__name__}"
                         f"({param}=...): pass --gin.{name}=... (or bind it in a gin file)")
    try:
      register()
    except DataError as e:
      raise UsageError(str(e)) from e


# -- data ------------------------------------------------------------------------------


def _provider(name: str):
  try:
    import seqio
  except ImportError as e:  # a JAX-only image (bench's model timing needs no data)
    raise UsageError(f"task or mixture {name!r}: seqio does not import ({e}); install "
                     "hypert5's requirements (TensorFlow, seqio)") from e
  import tasks  # noqa: F401  registers the file-free tasks
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = sorted(seqio.MixtureRegistry.names()) + sorted(seqio.TaskRegistry.names())
    close = [k for k in known if name.split("_")[0] in k][:8]
    raise UsageError(f"unknown task or mixture {name!r}; similar registered names: {close} "
                     "(tasks in user directories are registered by tasks.<family>.register "
                     "in a gin file)") from e


def _converter(name: str):
  from hypert5.data import converters
  # Our T5 takes no segment ids, so plain tasks are padded rather than packed.
  return converters.converter_for(_provider(name), pack=False)


def queries_per_row(exp: Experiment) -> int:
  """Queries per row of MIXTURE's tasks (registered with queries_per_task; default 1). A
  MIXTURE not registered here (shapes planned without its data) counts as 1; reading its
  data is what then fails, with the lookup's error."""
  try:
    provider = _provider(exp.mixture)
  except UsageError:
    return 1
  from hypert5.data import registry
  return registry.queries_per_task(provider)


def training_dataset(exp: Experiment, converter: Any, seed: int | None = None):
  """MIXTURE's endless, shuffled training batches of this host's share, as tf.data."""
  import seqio
  from hypert5.data import performance, registry
  num_hosts = jax.process_count()
  if exp.batch_size % num_hosts:
    raise UsageError(f"batch_size {exp.batch_size} does not divide over {num_hosts} hosts")
  provider = _provider(exp.mixture)
  with performance.shuffle_buffers(provider, exp.shuffle_buffer_size):
    ds = seqio.get_dataset(
        provider, exp.task_feature_lengths, converter, dataset_split="train", shuffle=True,
        num_epochs=None, seed=exp.trainer.seed if seed is None else seed,
        batch_size=exp.batch_size // num_hosts, verbose=False,
        shard_info=seqio.ShardInfo(jax.process_index(), num_hosts),
        trim_output_features=registry.trims_output_features(provider))
  return ds.with_options(performance.tf_data_options())


def train_batches(exp: Experiment, start: int = 0, seed: int | None = None) -> Iterator[dict]:
  """Deterministic, endless batches of this host's share; skips `start` batches (resume)."""
  ds = training_dataset(exp, _converter(exp.mixture), seed)
  split = _oracle_splitter(exp) if exp.objective.mode == "peft_friendly" else None
  from hypert5.data import performance
  for batch in performance.numpy_batches(ds.skip(start)):
    batch = {k: v for k, v in batch.items() if k in MODEL_KEYS}
    yield split(batch) if split else batch


def batch_shapes(exp: Experiment) -> dict[str, tuple[int, ...]]:
  """{feature: shape} of the batches train_batches yields for this experiment: (batch,
  length), or (batch, Q, length) for the query features of rows of Q queries."""
  if runs_llama.handles(exp):
    return runs_llama.batch_shapes(exp)
  obj, lengths, b = exp.objective, exp.task_feature_lengths, exp.batch_size
  q = queries_per_row(exp)
  rows = (b,) if q == 1 else (b, q)  # rows of several queries: [batch, Q, length]
  shapes = {k: rows + (lengths["targets"],) for k in MODEL_KEYS[2:]}
  shapes["encoder_input_tokens"] = rows + (lengths["inputs"],)
  if obj.mode == "hyper":
    shapes["hyper_encoder_input_tokens"] = (b, lengths["hyper_inputs"])
  if obj.mode == "peft_friendly":
    shapes.update(description_tokens=(b, exp.description_tokens), query_tokens=shapes[
        "decoder_target_tokens"])
  return shapes


def _oracle_splitter(exp: Experiment):
  """peft_friendly mode: adds the description and bare query of each oracle row."""
  from hypert5.data import fewshot
  vocab_size = _provider(exp.mixture).output_features["inputs"].vocabulary.vocab_size
  desc_len = exp.description_tokens
  query_len = exp.task_feature_lengths["targets"]

  def split(batch):
    desc, query = fewshot.split_oracle(batch["encoder_input_tokens"], vocab_size, desc_len,
                                       query_len)
    return {**batch, "description_tokens": desc, "query_tokens": query}
  return split


# -- models ----------------------------------------------------------------------------


def load_downstream(exp: Experiment) -> dict:
  cfg = exp.objective.t5
  if exp.downstream_checkpoint is None:
    log.warning("no downstream_checkpoint: the downstream T5 is randomly initialised")
    return t5.init_params(cfg, jax.random.key(exp.trainer.seed))
  try:
    # In the configured param_dtype, as a fresh init would be: checkpoints (and restore's
    # abstract template) hold the trained downstream or HyperT5 body in that dtype.
    loaded_cfg, params = model_io.load_t5(exp.downstream_checkpoint, dtype=cfg.param_dtype,
                                          config_overrides={"scan_layers": cfg.scan_layers})
  except model_io.CheckpointError as e:
    raise UsageError(str(e)) from e
  arch = lambda c: dataclasses.replace(c, dtype="float32", param_dtype="float32",
                                       dropout_rate=0.0, scan_layers=False, remat_policy="none")
  if arch(loaded_cfg) != arch(cfg):
    raise UsageError(f"{exp.downstream_checkpoint}: its architecture {arch(loaded_cfg)} "
                     f"differs from the configured model {arch(cfg)}; bind experiment.model "
                     "to the checkpoint's size")
  return params


def initial_peft(exp: Experiment) -> Any:
  """experiment.initial_peft (a peft.safetensors from `export`), checked against the shapes
  of the tuning mode, so a prefix of another length or a LoRA of another rank or model is a
  one-line error here rather than a shape error inside the first step or at eval."""
  if not exp.initial_peft:
    return None
  peft = peft_io.load_peft_safetensors(exp.initial_peft)
  if exp.objective.mode not in ("prefix", "lora"):
    return peft
  want = jax.eval_shape(exp.objective.random_peft, jax.random.key(0))
  if type(peft) is not type(want):
    raise UsageError(f"{exp.initial_peft}: holds a {type(peft).__name__}, but mode "
                     f"{exp.objective.mode!r} tunes a {type(want).__name__}; set "
                     "experiment.mode (PEFT_MODE) to the kind the file holds")
  # Per leaf path, the shape without the batch axis; a LoRA's alpha is static (no leaf).
  describe = lambda t: {**{jax.tree_util.keystr(path): tuple(x.shape[1:])  # noqa: E731
                           for path, x in jax.tree_util.tree_leaves_with_path(t)},
                        **({"alpha": t.alpha} if hasattr(t, "alpha") else {})}
  have, need = describe(peft), describe(want)
  if have != need:
    differ = {k: (have.get(k), need.get(k)) for k in {**have, **need}
              if have.get(k) != need.get(k)}
    raise UsageError(
        f"{exp.initial_peft}: a {type(peft).__name__} that differs from what mode "
        f"{exp.objective.mode!r} of this model needs (field: (file, needed)) "
        f"{dict(list(differ.items())[:4])}; export it from a hypermodel run of the same "
        "model, or match HyperT5Config.prefix_length / lora_rank / lora_alpha / "
        "lora_targets (HyperLlamaConfig.num_gist for HyperLlama)")
  return peft


def _write_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.config_str())


def evaluator_and_predictor(exp: Experiment):
  name = exp.eval_mixture or exp.mixture
  _provider(name)
  lengths = exp.task_feature_lengths
  evaluator = evaluation.make_evaluator(name, _converter(name), lengths, exp.eval_split,
                                        log_dir=os.path.join(exp.model_dir, "eval"))
  predictor = evaluation.Predictor(exp.objective, exp.eval_batch_size,
                                   lengths.get("targets", 128), exp.num_beams)
  return evaluator, predictor


# -- modes -----------------------------------------------------------------------------


@gin.configurable
def train(export_hf_at_end: bool = True) -> trainer_lib.TrainState:
  """Trains (or resumes) in MODEL_DIR. In `full` mode the final T5 is also written as a
  Hugging Face directory MODEL_DIR/hf, ready to be another run's downstream_checkpoint."""
  exp = experiment()
  if runs_llama.handles(exp):
    return runs_llama.train(exp, export_hf_at_end)
  _write_config(exp.model_dir)
  obj, cfg = exp.objective, exp.trainer
  peft = initial_peft(exp)  # checked before a large downstream loads
  downstream = load_downstream(exp)
  trainable, frozen = obj.init(jax.random.key(cfg.seed + 1), downstream, peft)
  if exp.init_head_from:
    trainable = init_head_from(trainable, exp.init_head_from, obj.hyper.peft_type)
  if not obj.trains_downstream:
    checkpoints.write_downstream_reference(exp.model_dir, {
        "downstream_checkpoint": exp.downstream_checkpoint, "mode": obj.mode,
        "note": "frozen downstream; referenced here, not re-saved in checkpoints/"})
  mesh = partitioning.make_mesh(exp.mesh)
  opt = optimizer(exp)

  checkpointer = checkpoints.Checkpointer(exp.model_dir, cfg.keep_checkpoints,
                                          cfg.checkpoint_every, cfg.async_checkpoints)
  start = 0
  batches = train_batches(exp)
  first = next(batches)
  trainer = trainer_lib.Trainer(obj, opt, cfg, mesh, first)
  state = trainer.init_state(trainable)
  if checkpointer.latest_step() is not None:
    try:
      state, meta = checkpointer.restore(state)
    except checkpoints.CheckpointMismatchError as e:
      raise UsageError(str(e)) from e
    start = int(meta["batches"])
    batches = train_batches(exp, start=start)
  else:
    batches = _chain([first], batches)
    if exp.init_from:
      try:
        state = state.replace(params=checkpoints.restore_params_from(exp.init_from, state))
      except checkpoints.CheckpointMismatchError as e:
        raise UsageError(str(e)) from e
      log.info("initialised the trainable parameters from %s", exp.init_from)
  trainer.batches_consumed = start
  frozen = trainer.place_frozen(frozen)

  hooks: list[trainer_lib.Hook] = [
      trainer_lib.MetricsLogger(exp.model_dir, cfg.log_every, _step_flops(exp), cfg.num_steps),
      trainer_lib.CheckpointHook(checkpointer)]
  if cfg.eval_every and exp.eval_mixture:
    evaluator, predictor = evaluator_and_predictor(exp)
    hooks.append(trainer_lib.PeriodicHook(cfg.eval_every, lambda tr, st: evaluation.evaluate(
        evaluator, predictor, st.params, frozen, int(st.step),
        os.path.join(exp.model_dir, "eval"))))
  state = trainer.train(state, frozen, batches, hooks)
  if obj.trains_downstream and export_hf_at_end and jax.process_index() == 0:
    params = jax.device_get(state.params)
    model_io.save_hf_t5(obj.t5, obj.downstream(params, {}),
                        os.path.join(exp.model_dir, "hf"), overwrite=True)
    if obj.mode == "peft_friendly":
      peft_io.save_tree_safetensors(params["reparam"],
                                    os.path.join(exp.model_dir, REPARAM_FILE))
  return state


REPARAM_FILE = "reparam.safetensors"


def init_head_from(trainable: dict, model_dir: str, peft_type: str) -> dict:
  """HyperT5 parameters whose queries and generator head are a peft_friendly run's
  description reader of `peft_type` (MODEL_DIR/reparam.safetensors, written at its end);
  with the body from that run's T5 the hypermodel starts as that reader."""
  path = os.path.join(model_dir, REPARAM_FILE)
  if "head" not in trainable or not os.path.exists(path):
    raise UsageError(f"experiment.init_head_from: {path} not found, or this run is not "
                     "HyperT5; point it at a finished peft_friendly run's MODEL_DIR")
  saved = peft_io.load_tree_safetensors(path)
  if peft_type not in saved:
    raise UsageError(f"{path} has no {peft_type!r} reader (it has {sorted(saved)}); "
                     "retrain the peft_friendly run with this version")
  reparam = saved[peft_type]
  expected = modes.reparam_part(trainable)
  if jax.tree.structure(reparam) != jax.tree.structure(expected) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(reparam), jax.tree.leaves(expected))):
    raise UsageError(f"{path}: the {peft_type} reader does not match this HyperT5's queries "
                     "and head; use the same prefix_length, prefix_kinds, lora_rank, "
                     "lora_targets and head_hidden as the peft_friendly run")
  log.info("initialised the %s queries and head from %s", peft_type, path)
  return {**trainable, **jax.tree.map(jnp.asarray, reparam)}


def _chain(first, rest):
  yield from first
  yield from rest


def _step_flops(exp: Experiment) -> float:
  """Analytic model FLOPs of one training step (training logs and `hypert5 bench`)."""
  obj, lengths, hyper = exp.objective, exp.task_feature_lengths, exp.objective.hyper
  hyper_len, queries = lengths.get("hyper_inputs", 0), hyper.num_queries if hyper else 0
  prefix_len = hyper.prefix_length if hyper and hyper.peft_type == "prefix" else 0
  if obj.mode == "peft_friendly":  # readers over the descriptions (as _oracle_splitter
    # lays them out), their queries averaged over their rows
    hyper_len, prefix_len = exp.description_tokens, 0
    queries = sum(obj.reader(k).num_queries for k in modes.READERS) // len(modes.READERS)
  return flops.step_flops(obj.mode, obj.t5, exp.batch_size, lengths.get("inputs", 0),
                          lengths.get("targets", 0), hyper_len, queries, prefix_len,
                          hyper.body if hyper else None, queries_per_row(exp))


def optimizer(exp: Experiment):
  """The run's optimizer; in hyper mode HyperT5's new parts (queries, heads) form their own
  group with OptimizerConfig.new_param_lr_multiplier."""
  new_params = optimizers.hyper_new_params if exp.objective.mode == "hyper" else None
  return optimizers.make_optimizer(exp.optimizer, new_params)


def restore_trainable(exp: Experiment, opt=None,
                      load_frozen=None) -> tuple[Any, Any, int]:
  """(trainable, frozen, step) from MODEL_DIR's latest checkpoint. The template is the
  mode's abstract shapes (jax.eval_shape): nothing is initialised only to be overwritten,
  which at T5-XL size would cost a compile and the model's memory twice. `opt` and
  `load_frozen` default to this module's (runs_llama passes its own)."""
  obj = exp.objective
  checkpointer = checkpoints.Checkpointer(exp.model_dir, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise UsageError(f"{exp.model_dir}/checkpoints: no checkpoint to evaluate; train "
                       "first or point MODEL_DIR at a trained run")
    opt = opt or optimizer(exp)
    from hypert5.training import train_step
    template = jax.eval_shape(lambda p: train_step.create_train_state(opt, p, jax.random.key(0)),
                              nn.unbox(obj.abstract_trainable()))
    state, _ = checkpointer.restore(template)
  except checkpoints.CheckpointMismatchError as e:
    raise UsageError(str(e)) from e
  finally:
    checkpointer.close()
  # The frozen downstream is not in the checkpoint (modes that train it have none).
  frozen = (load_frozen or load_downstream)(exp) if jax.tree.leaves(obj.abstract_frozen()) else {}
  return state.params, frozen, int(state.step)


@gin.configurable
def evaluate() -> dict:
  """Evaluates MODEL_DIR's latest checkpoint on EVAL_MIXTURE; writes MODEL_DIR/eval/."""
  exp = experiment()
  if runs_llama.handles(exp):
    return runs_llama.evaluate(exp)
  trainable, frozen, step = restore_trainable(exp)
  evaluator, predictor = evaluator_and_predictor(exp)
  return evaluation.evaluate(evaluator, predictor, trainable, frozen, step,
                             os.path.join(exp.model_dir, "eval"))


def _encode_few_shot(exp: Experiment, examples_file: str) -> np.ndarray:
  """The few-shot examples of a JSONL ({"input", "output"}) as hyper-encoder tokens, laid
  out exactly as the tasks lay them out (sentinel markers, whole examples, EOS)."""
  from hypert5.data import fewshot
  vocab = _provider(exp.mixture).output_features["targets"].vocabulary
  rows = _read_jsonl(examples_file, ("input", "output"))
  length = exp.task_feature_lengths["hyper_inputs"]
  tokens, kept = fewshot.encode_few_shot(vocab, [(r["input"], r["output"]) for r in rows],
                                         length)
  if kept < len(rows):
    log.warning("%s: only %d of %d examples fit in hyper_inputs length %d", examples_file,
                kept, len(rows), length)
  return tokens


def _read_jsonl(path: str, fields: tuple[str, ...]) -> list[dict]:
  if not os.path.exists(path):
    raise UsageError(f"{path}: no such file")
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{n}: not valid JSON ({e.msg})") from e
      missing = [k for k in fields if k not in row]
      if missing:
        raise UsageError(f"{path}:{n}: missing field(s) {missing}; each line needs {fields}")
      rows.append(row)
  if not rows:
    raise UsageError(f"{path}: empty file")
  return rows


def generate_for_examples(exp: Experiment, examples_file: str):
  """(generated peft [batch 1], trainable, frozen) for the few-shot examples in a JSONL."""
  trainable, frozen, _ = restore_trainable(exp)
  obj = exp.objective
  if obj.mode != "hyper":
    return obj.generate(trainable, frozen, {}), trainable, frozen
  tokens = _encode_few_shot(exp, examples_file)
  peft = jax.jit(lambda tr, fr, h: obj.generate(tr, fr, {"hyper_encoder_input_tokens": h}))(
      trainable, frozen, tokens[None])
  return peft, trainable, frozen


@gin.configurable
def infer(examples_file: str = gin.REQUIRED, queries_file: str = gin.REQUIRED,
          output_file: str = gin.REQUIRED) -> list[str]:
  """Generates outputs for each query ({"input": ...}) of one task given its few-shot
  examples ({"input", "output"}); writes JSONL {"input", "output"}."""
  exp = experiment()
  if runs_llama.handles(exp):
    return runs_llama.infer(exp, examples_file, queries_file, output_file)
  peft, trainable, frozen = generate_for_examples(exp, _required(examples_file, "infer.examples_file"))
  vocab = _provider(exp.mixture).output_features["targets"].vocabulary
  queries = _read_jsonl(_required(queries_file, "infer.queries_file"), ("input",))
  length = exp.task_feature_lengths["inputs"]
  enc = np.zeros((len(queries), length), np.int32)
  for i, q in enumerate(queries):
    ids = list(vocab.encode(q["input"]))[:length - 1] + [1]
    enc[i, :len(ids)] = ids
  predictor = evaluation.Predictor(exp.objective, len(queries),
                                   exp.task_feature_lengths["targets"], exp.num_beams)
  tokens = np.asarray(predictor._predict(trainable, frozen, peft, enc))
  outputs = [vocab.decode(evaluation._strip(t)) for t in tokens]
  os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with open(output_file, "w") as f:
    for q, o in zip(queries, outputs):
      f.write(json.dumps({"input": q["input"], "output": o}) + "\n")
  return outputs


@gin.configurable
def export(examples_file: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
           formats: tuple[str, ...] = ("orbax", "safetensors", "peft", "merged")) -> dict:
  """Writes one task's generated parameters: an Orbax checkpoint, a safetensors file, and
  for LoRA a PEFT adapter directory and a merged Hugging Face T5 directory."""
  exp = experiment()
  if runs_llama.handles(exp):
    return runs_llama.export(exp, examples_file, output_dir, formats)
  peft, trainable, frozen = generate_for_examples(exp, _required(examples_file, "export.examples_file"))
  if peft is None:
    raise UsageError("export needs a mode that generates parameters (hyper, prefix, lora)")
  peft = jax.device_get(peft)
  output_dir = _required(output_dir, "export.output_dir")
  written = {}
  for fmt in formats:
    if fmt == "orbax":
      written[fmt] = peft_io.save_peft_orbax(peft, os.path.join(output_dir, "orbax"))
    elif fmt == "safetensors":
      written[fmt] = peft_io.save_peft_safetensors(peft, os.path.join(output_dir, "peft.safetensors"))
    elif fmt in ("peft", "merged") and not isinstance(peft, peft_lib.LoRA):
      log.info("export: %s needs LoRA; skipped for a prefix", fmt)
    elif fmt == "peft":
      written[fmt] = os.path.join(output_dir, "peft_adapter")
      peft_io.save_peft_adapter(peft, exp.objective.t5, written[fmt])
    elif fmt == "merged":
      written[fmt] = os.path.join(output_dir, "merged_hf")
      downstream = exp.objective.downstream(trainable, frozen)
      merged = peft_lib.merge_lora(jax.device_get(downstream), peft, exp.objective.t5)
      model_io.save_hf_t5(exp.objective.t5, merged, written[fmt], overwrite=True)
    else:
      raise UsageError(f"unknown export format {fmt!r}; use orbax, safetensors, peft, merged")
  log.info("export: wrote %s", json.dumps(written))
  return written


@gin.configurable
def bench(steps: int = 10, warmup: int = 2, output_file: str | None = None,
          input_batches: int = 20, input_warmup: int = 20, profile_dir: str | None = None,
          profile_steps: int = 3) -> dict:
  """Times training steps on random tokens at the configured size, mode and batch, then
  the input pipeline alone: `input_batches` batches of MIXTURE as training pulls them,
  after `input_warmup` more (input_batches=0 skips this, e.g. for a mixture whose data is
  not on this machine). A mixture starts each task's pipeline when it first draws from
  that task, so one of many tasks needs a longer warm-up before its rate is steady.
  With `profile_dir`, `profile_steps` more steps run under jax.profiler after the timed
  ones (the profiler slows what it traces): a TensorBoard / Perfetto trace there, which
  benchmarks/trace_summary.py sums by kernel."""
  exp = experiment()
  if profile_dir and profile_steps < 1:
    raise UsageError(f"bench.profile_steps={profile_steps}: profiling needs at least 1 step")
  profile = (profile_dir, profile_steps)
  if runs_llama.handles(exp):
    return runs_llama.bench(exp, steps, warmup, output_file, (input_warmup, input_batches),
                            profile)
  obj, lengths, b = exp.objective, exp.task_feature_lengths, exp.batch_size
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(2, obj.t5.vocab_size, shape).astype(np.int32)
           for k, shape in batch_shapes(exp).items()}
  batch["decoder_loss_weights"] = np.ones_like(batch["decoder_loss_weights"])
  return time_train_steps(exp, optimizer(exp),
                          t5.init_params(obj.t5, jax.random.key(0)), batch, steps, warmup,
                          _step_flops(exp),
                          b * queries_per_row(exp) * (lengths["inputs"] + lengths["targets"]),
                          output_file, (input_warmup, input_batches), profile,
                          lengths=lengths)


def time_input(exp: Experiment, timed: dict, warmup: int, n: int) -> dict:
  """The input pipeline alone (tf.data on every core, nothing else running): MIXTURE's
  batches as training pulls them. The first (`input_build_s`) is checked against the batch
  the step was timed on (this host's share of it); then `warmup` batches fill the tasks'
  shuffle buffers (`input_warmup_s`), and `n` more give `input_s_per_batch`."""
  import tensorflow as tf
  hint = ("pass the run's MIXTURE and task_feature_lengths to time its data, or "
          "--gin.bench.input_batches=0 to skip the input timing")
  batches = (runs_llama.train_batches if runs_llama.handles(exp) else train_batches)(exp)
  try:
    t0 = time.perf_counter()
    try:
      first = next(batches)
    except (ValueError, tf.errors.OpError) as e:
      raise UsageError(f"bench: MIXTURE {exp.mixture!r}: {e}; {hint}") from e
    hosts = jax.process_count()
    want = {k: (v.shape[0] // hosts, *v.shape[1:]) for k, v in timed.items()}
    have = {k: tuple(first[k].shape) if k in first else None for k in want}
    if have != want:
      raise UsageError(f"bench: MIXTURE {exp.mixture!r} gives batches shaped {have} in mode "
                       f"{exp.objective.mode!r}, but the step is timed on {want}; {hint}")
    t1 = time.perf_counter()
    for _ in range(warmup):
      next(batches)
    t2 = time.perf_counter()
    for _ in range(n):
      next(batches)
    return {"input_build_s": t1 - t0, "input_warmup_s": t2 - t1,
            "input_s_per_batch": (time.perf_counter() - t2) / n}
  finally:
    batches.close()  # stops tf.data's background threads


def _step_times(exp: Experiment, opt, trainable, frozen, batch: dict, steps: int,
                warmup: int, profile: tuple[str | None, int] = (None, 0)) -> list[float]:
  """Wall times of `steps` jitted, donated train steps on one placed batch, after `warmup`;
  then, with `profile` = (directory, n), n more steps under jax.profiler."""
  mesh = partitioning.make_mesh(exp.mesh)
  tr = trainer_lib.Trainer(exp.objective, opt, exp.trainer, mesh, batch)
  state, frozen = tr.init_state(trainable), tr.place_frozen(frozen)
  times = []
  with jax.set_mesh(mesh), partitioning.axis_rules():
    placed = jax.device_put(batch, tr.batch_sh)
    for i in range(warmup + steps):
      t0 = time.perf_counter()
      state, metrics = tr._step(state, frozen, placed)
      jax.block_until_ready(metrics)
      if i >= warmup:
        times.append(time.perf_counter() - t0)
    if profile[0]:
      try:
        with jax.profiler.trace(profile[0], create_perfetto_trace=True):
          for _ in range(profile[1]):
            state, metrics = tr._step(state, frozen, placed)
            jax.block_until_ready(metrics)
      except Exception as e:  # pylint: disable=broad-except  the timing stands without it
        log.warning("bench: profiling into %s failed (%s); the step timing is kept",
                    profile[0], e)
  return times


def time_train_steps(exp: Experiment, opt, downstream: dict, batch: dict, steps: int,
                     warmup: int, step_flops: float, tokens_per_step: int,
                     output_file: str | None, input_counts: tuple[int, int] = (0, 0),
                     profile: tuple[str | None, int] = (None, 0), **fields) -> dict:
  """`hypert5 bench`'s measurement (T5 and Llama experiments): the median time of `steps`
  jitted, donated train steps after `warmup`, on one fixed batch; throughput, TFLOP/s,
  MFU and peak memory from it. With `input_counts` = (warm-up, timed) batches, timed > 0,
  then the input pipeline alone (`time_input`) and `input_headroom`: how many times faster
  it makes batches than the step consumes them (per host: each pulls its share). Prints
  the result as JSON and writes it to `output_file`, the step's part also when the input
  timing fails. `profile`: see `bench`."""
  obj = exp.objective
  trainable, frozen = obj.init(jax.random.key(1), downstream)
  step_time = float(np.median(_step_times(exp, opt, trainable, frozen, batch, steps, warmup,
                                          profile)))
  peak, source = flops.device_peak_flops()
  tflops = step_flops / step_time / jax.device_count() / 1e12
  stats = jax.devices()[0].memory_stats() or {}
  result = {
      "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "mode": obj.mode,
      "batch": exp.batch_size, **fields, "step_time_s": step_time,
      "tokens_per_s": tokens_per_step / step_time,
      "model_tflops_per_step": step_flops / 1e12, "tflops_per_device": tflops,
      "mfu": tflops * 1e12 / peak if peak else None, "peak_source": source,
      "peak_memory_gb": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
      "trainable_params": modes.count_params(trainable),
      **({"profile_dir": profile[0]} if profile[0] else {}),
  }
  try:
    if input_counts[1]:  # after the steps, so tf.data's threads do not slow them
      result.update(time_input(exp, batch, *input_counts))
      result["input_headroom"] = step_time / result["input_s_per_batch"]
  finally:
    print(json.dumps(result, indent=2))
    if output_file:
      with open(output_file, "w") as f:
        json.dump(result, f, indent=2)
  return result
