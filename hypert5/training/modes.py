"""Which parameters train: the four training modes behind one loss interface.

Every mode splits the parameters into `trainable` (given gradients and optimizer state)
and `frozen` (a separate pytree under stop_gradient: no weight gradients, never in the
optimizer, so it costs its own memory only):

- `hyper`:  trainable = HyperT5; frozen = the downstream T5. The paper's method.
- `full`:   trainable = the downstream T5 itself; frozen = {}. The T5-MTF baseline (with or
            without few-shot examples in its input: that is a data choice).
- `prefix` / `lora`: trainable = one task's Prefix / LoRA (batch axis 1, shared by every
            row); frozen = the downstream T5. Initialised randomly or from HyperT5's
            generated values (the paper's hyper-init).
- `peft_friendly`: trainable = {"t5": the downstream T5, "reparam": {"prefix": ...,
            "lora": ...}, each a HyperT5's queries and head}; frozen = {}. A T5-MTF
            variant that teaches the downstream to read generated parameters before it is
            frozen: on oracle rows (description + query), half of each batch
            (`text_fraction`) reads the description as ordinary tokens; the rest reads the
            bare query with the description turned into a prefix (one quarter) or a LoRA
            (the other) by a description reader: a HyperT5 whose body is the T5 itself and
            whose queries and head are `reparam[kind]`. At small scale a hypermodel over a
            downstream that never saw generated parameters learns almost nothing;
            HyperT5-Prefix / -LoRA start as these readers (body from the T5, queries and
            head from `reparam`: runs.init_head_from), so they only have to learn to read
            examples where they read descriptions. The reader encodes the description
            first: a per-token prefix carries no order (prefix positions get no position
            bias), so "a>d c>k" would arrive as a bag of letters.

Batches are dicts in the feature converter's layout (hyper_encoder_input_tokens,
encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from hypert5.models import gisting, hypermodel, llama, peft as peft_lib, t5
from hypert5.models.configs import T5Config
from hypert5.training import losses

MODES = ("hyper", "full", "prefix", "lora", "peft_friendly")
# Batch features of peft_friendly mode, split from oracle rows by the input pipeline.
ORACLE_KEYS = ("description_tokens", "query_tokens")
# HyperT5's parameters outside its body: peft_friendly's description readers train them
# (one reader per kind) and HyperT5-Prefix / -LoRA start from them (runs: init_head_from).
REPARAM_KEYS = ("queries", "head")
READERS = ("prefix", "lora")


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training mode over a downstream T5 architecture.

  `hyper` is needed for mode "hyper"; for "prefix"/"lora" it supplies the shapes (prefix
  length, LoRA rank/targets/alpha), so tuning and hypermodel output are interchangeable.
  """

  mode: str
  t5: T5Config
  hyper: hypermodel.HyperT5Config | None = None
  z_loss: float = 0.0
  # peft_friendly: the share of each batch that reads the description as ordinary tokens;
  # the rest is split evenly between the description readers.
  text_fraction: float = 0.5

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown training mode {self.mode!r}; expected one of {MODES}")
    if not 0.0 <= self.text_fraction < 1.0:
      raise ValueError(f"text_fraction={self.text_fraction}: expected a share in [0, 1) of "
                       "each peft_friendly batch (the rest goes to the description readers)")
    if self.mode != "full" and self.hyper is None:
      raise ValueError(f"training mode {self.mode!r} needs a HyperT5Config (hyper=...) for "
                       "the shapes of the generated parameters")

  @property
  def trains_downstream(self) -> bool:
    """Whether the downstream T5 itself is trainable (nothing is frozen)."""
    return self.mode in ("full", "peft_friendly")

  def downstream(self, trainable, frozen) -> dict:
    """The downstream T5's parameters under this mode."""
    if self.mode == "full":
      return trainable
    return trainable["t5"] if self.mode == "peft_friendly" else frozen

  # -- parameters ------------------------------------------------------------------------

  def init(self, rng: jax.Array, downstream_params: dict,
           initial_peft: peft_lib.PEFT = None) -> tuple[Any, dict]:
    """Returns (trainable, frozen)."""
    if self.mode == "full":
      return downstream_params, {}
    if self.mode == "peft_friendly":
      # Only the readers' own parts are kept (jit drops the unused bodies).
      init = lambda r: {kind: reparam_part(hypermodel.init_hyper_params(self.reader(kind), k))
                        for kind, k in zip(READERS, jax.random.split(r, len(READERS)))}
      return {"t5": downstream_params, "reparam": jax.jit(init)(rng)}, {}
    if self.mode == "hyper":
      return hypermodel.init_hyper_params(self.hyper, rng, downstream_params), downstream_params
    if initial_peft is not None:
      return _first_row(initial_peft), downstream_params
    return self.random_peft(rng), downstream_params

  def random_peft(self, rng: jax.Array) -> peft_lib.Prefix | peft_lib.LoRA:
    """Random initial values for prefix / LoRA tuning (B = 0 for LoRA, as in PEFT)."""
    h, cfg = self.hyper, self.t5
    if self.mode == "prefix":
      prefix = peft_lib.zero_prefix(cfg, 1, h.prefix_length, h.prefix_kinds)
      keys = jax.random.split(rng, 2 * len(h.prefix_kinds))
      rand = lambda k, x: jax.random.normal(k, x.shape, x.dtype)
      ks = {n: rand(keys[2 * i], x) for i, (n, x) in enumerate(prefix.keys.items())}
      vs = {n: rand(keys[2 * i + 1], x) for i, (n, x) in enumerate(prefix.values.items())}
      return peft_lib.Prefix(keys=ks, values=vs)
    a, b = {}, {}
    for i, (kind, proj) in enumerate(h.lora_targets):
      a_shape, b_shape = peft_lib.lora_shapes(cfg, kind, proj, h.lora_rank)
      std = a_shape[1] ** -0.5
      a.setdefault(kind, {})[proj] = std * jax.random.normal(jax.random.fold_in(rng, i),
                                                              (1,) + a_shape)
      b.setdefault(kind, {})[proj] = jnp.zeros((1,) + b_shape)
    return peft_lib.LoRA(a=a, b=b, alpha=h.lora_alpha)

  def abstract_trainable(self) -> Any:
    """Trainable shapes with logical-axis metadata (for shardings), allocating nothing."""
    if self.mode == "hyper":
      return hypermodel.abstract_hyper_params(self.hyper)
    if self.mode == "full":
      return t5.abstract_params(self.t5)
    if self.mode == "peft_friendly":
      reparam = {kind: reparam_part(hypermodel.abstract_hyper_params(self.reader(kind)))
                 for kind in READERS}
      return {"t5": t5.abstract_params(self.t5), "reparam": reparam}
    return jax.eval_shape(self.random_peft, jax.random.key(0))

  def abstract_frozen(self) -> Any:
    return {} if self.trains_downstream else t5.abstract_params(self.t5)

  # -- forward ---------------------------------------------------------------------------

  def generate(self, trainable, frozen, batch: dict, rng: jax.Array | None = None,
               enable_dropout: bool = False) -> peft_lib.PEFT:
    """The parameters this mode injects into the downstream model for `batch`."""
    if self.mode == "hyper":
      rngs = {"dropout": rng} if enable_dropout else {}
      return hypermodel.HyperT5(self.hyper).apply(
          {"params": trainable}, batch["hyper_encoder_input_tokens"], enable_dropout, rngs=rngs)
    if self.trains_downstream:
      return None
    return trainable

  def reader(self, kind: str) -> hypermodel.HyperT5Config:
    """peft_friendly: the description reader of `kind` ("prefix" | "lora"), shaped by the
    experiment's HyperT5Config (prefix_length, lora_rank, head_hidden, ...); its body is the
    T5 itself, so no extra encoder layers."""
    return self.hyper.replace(peft_type=kind, extra_encoder_layers=0)

  def read_description(self, trainable, kind: str,
                       description_tokens: jax.Array) -> peft_lib.Prefix | peft_lib.LoRA:
    """peft_friendly: the description [batch, len] as a prefix or LoRA, made by a HyperT5
    whose body is the downstream T5 being trained and whose queries and head are
    `trainable["reparam"][kind]`."""
    params = {**hypermodel.body_of(trainable["t5"]), **trainable["reparam"][kind]}
    return hypermodel.HyperT5(self.reader(kind)).apply({"params": params}, description_tokens)

  def oracle_logits(self, trainable, kind: str | None, batch: dict,
                    enable_dropout: bool = False, rngs: dict | None = None) -> jax.Array:
    """peft_friendly: the downstream's logits on oracle rows, the description read as text
    (`kind` None: description + query) or by the `kind` reader (bare query + its output)."""
    if kind is None:
      inputs, peft = batch["encoder_input_tokens"], None
    else:
      inputs = batch["query_tokens"]
      peft = self.read_description(trainable, kind, batch["description_tokens"])
    return t5.T5(self.t5).apply({"params": trainable["t5"]}, inputs,
                                batch["decoder_input_tokens"], peft, enable_dropout,
                                rngs=rngs or {})

  def logits(self, trainable, frozen, batch: dict, rng: jax.Array | None = None,
             enable_dropout: bool = False) -> jax.Array:
    gen_rng = down_rng = None
    if enable_dropout:
      gen_rng, down_rng = jax.random.split(rng)
    peft = self.generate(trainable, frozen, batch, gen_rng, enable_dropout)
    encoder, decoder = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    if encoder.ndim == 3:  # [rows, Q, length]: Q queries share their row's parameters
      queries = encoder.shape[1]
      encoder, decoder = _flat_queries(encoder), _flat_queries(decoder)
      if self.mode == "hyper":
        peft = jax.tree.map(lambda x: jnp.repeat(x, queries, axis=0), peft)
    downstream = self.downstream(trainable, jax.lax.stop_gradient(frozen))
    rngs = {"dropout": down_rng} if enable_dropout else {}
    return t5.T5(self.t5).apply({"params": downstream}, encoder, decoder, peft,
                                enable_dropout, rngs=rngs)

  def loss(self, trainable, frozen, batch: dict, rng: jax.Array | None = None,
           enable_dropout: bool = False) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, number of target tokens). Rows of several queries
    (`fewshot.group_queries`: [rows, Q, length] query features) generate once per row."""
    if self.mode == "peft_friendly":
      return self._peft_friendly_loss(trainable, batch, rng, enable_dropout)
    logits = self.logits(trainable, frozen, batch, rng, enable_dropout)
    weights = batch.get("decoder_loss_weights")
    return losses.cross_entropy(logits, _flat_queries(batch["decoder_target_tokens"]),
                                None if weights is None else _flat_queries(weights),
                                self.z_loss)

  def _peft_friendly_loss(self, trainable, batch, rng, enable_dropout):
    """The first `text_fraction` of the batch: description as text; the rest split between
    the readers (description as a prefix, as a LoRA)."""
    n = batch["encoder_input_tokens"].shape[0]
    text = int(n * self.text_fraction)  # rounded down: n // 2 at the default
    bounds = [0] + [text + i * (n - text) // len(READERS) for i in range(len(READERS) + 1)]
    parts = list(zip((None,) + READERS, bounds[:-1], bounds[1:]))  # None: as text
    rngs = ([{"dropout": r} for r in jax.random.split(rng, len(parts))] if enable_dropout
            else [{}] * len(parts))
    total, count = 0.0, 0.0
    for (kind, lo, hi), r in zip(parts, rngs):
      if hi == lo:  # a tiny batch leaves a reader without rows
        continue
      part = {k: v[lo:hi] for k, v in batch.items()}
      logits = self.oracle_logits(trainable, kind, part, enable_dropout, r)
      l, w = losses.cross_entropy(logits, part["decoder_target_tokens"],
                                  part.get("decoder_loss_weights"), self.z_loss)
      total, count = total + l, count + w
    return total, count


def _flat_queries(tokens: jax.Array) -> jax.Array:
  """[rows, Q, length] -> [rows * Q, length] (row-major: a row's queries stay together);
  [rows, length] unchanged."""
  return tokens.reshape(-1, tokens.shape[-1])


def reparam_part(hyper_params: dict) -> dict:
  """A HyperT5's queries and head: what peft_friendly trains as a reader besides the T5
  (the body), and what runs.init_head_from replaces."""
  return {k: hyper_params[k] for k in REPARAM_KEYS}


def _first_row(peft):
  return jax.tree.map(lambda x: x[:1], peft)


def count_params(tree: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


# -- decoder-only (Llama) ----------------------------------------------------------------

DECODER_MODES = ("hyper", "full", "lora", "prefix")


@dataclasses.dataclass(frozen=True)
class DecoderObjective:
  """The training modes over a decoder-only Llama, on DecoderOnlyFeatureConverter batches
  (hyper_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights):

  - `hyper`: HyperLlama; trainable = gist embeddings + hyper-stream LoRA, frozen = Llama.
  - `full`: the Llama itself. With few_shot="in_context" batches this is the few-shot-in-
    context baseline; `lora` is the same with HyperLlama's LoRA size on the frozen Llama.
  - `prefix`: one task's Prefix (batch 1) on the frozen Llama, from random values or from
    HyperLlama's (`init(..., initial_peft=gisting.generate_prefix(...))`).
  `hyper` supplies the shapes (gist count = prefix length, LoRA rank / targets) in every
  mode but `full`.
  """

  mode: str
  llama: "llama.LlamaConfig"
  hyper: "gisting.HyperLlamaConfig | None" = None
  z_loss: float = 0.0

  def __post_init__(self):
    if self.mode not in DECODER_MODES:
      raise ValueError(f"unknown decoder-only training mode {self.mode!r}; expected one of "
                       f"{DECODER_MODES}")
    if self.mode != "full" and self.hyper is None:
      raise ValueError(f"decoder-only mode {self.mode!r} needs a HyperLlamaConfig (hyper=...)")

  def init(self, rng: jax.Array, downstream_params: dict,
           initial_peft: peft_lib.PEFT = None) -> tuple[Any, dict]:
    """Returns (trainable, frozen)."""
    if self.mode == "full":
      return downstream_params, {}
    if self.mode == "hyper":
      return gisting.init_hyper_params(self.hyper, rng, downstream_params), downstream_params
    if initial_peft is not None:
      return _first_row(initial_peft), downstream_params
    return self.random_peft(rng), downstream_params

  def random_peft(self, rng: jax.Array) -> peft_lib.Prefix | peft_lib.LoRA:
    if self.mode == "prefix":
      return gisting.random_prefix(self.hyper, rng)
    return gisting.random_lora(self.hyper, rng)

  def abstract_trainable(self) -> Any:
    if self.mode == "hyper":
      return gisting.abstract_hyper_params(self.hyper)
    if self.mode == "full":
      return llama.abstract_params(self.llama)
    return jax.eval_shape(self.random_peft, jax.random.key(0))

  def abstract_frozen(self) -> Any:
    return {} if self.mode == "full" else llama.abstract_params(self.llama)

  def downstream(self, trainable, frozen) -> dict:
    """The downstream Llama's parameters under this mode."""
    return trainable if self.mode == "full" else frozen

  def generate(self, trainable, frozen, batch: dict, rng=None,
               enable_dropout: bool = False) -> peft_lib.PEFT:
    """The parameters injected into the downstream Llama for `batch` (None for `full`)."""
    if self.mode == "hyper":
      return gisting.generate_prefix(self.hyper, trainable, jax.lax.stop_gradient(frozen),
                                     batch["hyper_input_tokens"])
    return None if self.mode == "full" else trainable

  def logits(self, trainable, frozen, batch: dict, rng=None,
             enable_dropout: bool = False) -> jax.Array:  # Llama has no dropout
    tokens = batch["decoder_input_tokens"]
    if self.mode == "full":
      return gisting.downstream_logits(self.llama, trainable, tokens)
    frozen = jax.lax.stop_gradient(frozen)
    if self.mode == "hyper":
      return gisting.hyper_logits(self.hyper, trainable, frozen, batch["hyper_input_tokens"],
                                  tokens)
    return gisting.downstream_logits(self.llama, frozen, tokens, trainable)

  def loss(self, trainable, frozen, batch: dict, rng=None,
           enable_dropout: bool = False) -> tuple[jax.Array, jax.Array]:
    """(sum of target-token losses, number of target tokens)."""
    logits = self.logits(trainable, frozen, batch, rng, enable_dropout)
    return losses.cross_entropy(logits, batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"], self.z_loss)
