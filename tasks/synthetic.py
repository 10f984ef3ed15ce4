"""`synthetic`: a seeded, file-free family of string tasks, the project's embedded default.

A member copies its input, then substitutes three letters ("id_ad_ck_fb": a->d, c->k,
f->b) over a 12-letter alphabet; with `reversal=True` half the members reverse the input
first ("rev_..."). Which member a task is shows only through its examples, so a model can
solve it only by reading them; each member also has a short description ("copy: a>d c>k
f>b") for the oracle baseline. Prototypes settled the shape: this is learnable by tiny
models where Caesar shifts were not, thousands of distinct training members matter
(4,096), K = 6, and inputs of 5-10 letters keep byte sequences short. Reversal is off by
default: a tiny T5 learns the copy-and-substitute family with a description in ~1,500
steps, while with reversal it stayed near 60% token accuracy after 1,600 (measured in the
demo's session); long English descriptions ("replace a with d, ...") slowed it further.

The family and its split are a function of `seed`: training and held-out members are
disjoint. Training rows are generated in TensorFlow from their index (any number of them,
no files, no memory); held-out members have a fixed K-shot set and disjoint
train / validation / test queries (the train split serves prefix/LoRA tuning).

Registered (mode as in `hypert5.data.pipelines`; hyper mode shown, baselines insert the
mode: `synthetic_icl_train`, `synthetic_oracle_heldout_003`, ...):
  synthetic_train            training members, K sampled examples per query
  synthetic_train_q<Q>       the same, Q queries per row sharing their K examples
                             (registered by `register(queries_per_task=Q)`)
  synthetic_heldout_<i>      held-out member i, one fixed K-shot set, exact-match metrics
  synthetic_heldout          mixture of the held-out tasks
"""
import dataclasses
import functools
import hashlib
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from hypert5.data import fewshot
from hypert5.data import pipelines
from hypert5.data import registry
from hypert5.data import sources
from hypert5.data import vocab as vocab_lib

ALPHABET = "abcdefghijkl"
PREFIX = "synthetic"


@dataclasses.dataclass(frozen=True)
class Member:
  """One task: optional reversal, then a simultaneous letter substitution."""
  reverse: bool
  subs: Tuple[Tuple[str, str], ...]  # (from, to) pairs, sorted by `from`

  @property
  def name(self) -> str:
    return ("rev" if self.reverse else "id") + "".join(f"_{a}{b}" for a, b in self.subs)

  @property
  def description(self) -> str:
    subs = " ".join(f"{a}>{b}" for a, b in self.subs)
    return f"{'reverse' if self.reverse else 'copy'}: {subs}"

  def __call__(self, text: str) -> str:
    table = dict(self.subs)
    return "".join(table.get(c, c) for c in (text[::-1] if self.reverse else text))


def _rng(*parts) -> np.random.Generator:
  """A numpy generator seeded by a stable hash of `parts` (same on every host and run)."""
  digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _seed_pair(*parts) -> Tuple[int, int]:
  digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
  return (int.from_bytes(digest[:4], "little") >> 1, int.from_bytes(digest[4:8], "little") >> 1)


@dataclasses.dataclass(frozen=True)
class Family:
  """The members and examples of one synthetic family; everything follows from `seed`."""
  seed: int = 0
  num_train: int = 4096
  num_heldout: int = 64
  k: int = 6
  num_subs: int = 3
  min_len: int = 5
  max_len: int = 10
  reversal: bool = False  # members may reverse their input before substituting
  alphabet: str = ALPHABET
  heldout_sizes: Tuple[int, int, int] = (256, 64, 64)  # train / validation / test queries
  queries_per_task: int = 1  # queries per training row, sharing its K examples

  def __post_init__(self):
    fewshot.check_k(self.k)
    if not 1 <= self.min_len <= self.max_len:
      raise ValueError(f"synthetic: need 1 <= min_len <= max_len, got {self.min_len}, "
                       f"{self.max_len}.")
    fewshot.check_queries_per_task(self.queries_per_task, source="synthetic")
    if self.num_subs > len(self.alphabet) // 2:
      raise ValueError(f"synthetic: num_subs={self.num_subs} is too many for "
                       f"{len(self.alphabet)} letters.")

  @functools.cached_property
  def members(self) -> Tuple[Member, ...]:
    """num_train + num_heldout distinct members; the first num_train are for training."""
    rng = _rng("members", self.seed)
    letters = list(self.alphabet)
    chosen: Dict[Member, None] = {}
    want = self.num_train + self.num_heldout
    while len(chosen) < want:
      src = sorted(rng.choice(letters, self.num_subs, replace=False))
      # Distinct targets, none mapping a letter to itself.
      dst = rng.choice(letters, self.num_subs, replace=False)
      if any(a == b for a, b in zip(src, dst)):
        continue
      reverse = bool(rng.integers(2)) if self.reversal else False
      chosen.setdefault(Member(reverse,
                               tuple((str(a), str(b)) for a, b in zip(src, dst))))
    return tuple(chosen)

  @property
  def train_members(self) -> Tuple[Member, ...]:
    return self.members[:self.num_train]

  @property
  def heldout_members(self) -> Tuple[Member, ...]:
    return self.members[self.num_train:]

  def _strings(self, rng: np.random.Generator, n: int) -> List[str]:
    """n distinct random strings."""
    out: Dict[str, None] = {}
    while len(out) < n:
      length = rng.integers(self.min_len, self.max_len + 1)
      out.setdefault("".join(rng.choice(list(self.alphabet), length)))
    return list(out)

  @functools.lru_cache(maxsize=None)
  def _heldout_strings(self, member: Member) -> Tuple[str, ...]:
    return tuple(self._strings(_rng("heldout", self.seed, member.name),
                               self.k + sum(self.heldout_sizes)))

  def support(self, member: Member) -> Tuple[Tuple[str, str], ...]:
    """The fixed K-shot set of a (held-out) member: identical across runs and hosts."""
    return tuple((x, member(x)) for x in self._heldout_strings(member)[:self.k])

  def queries(self, member: Member, split: str) -> Tuple[Tuple[str, str], ...]:
    """Query examples of a member's split (train / validation / test), disjoint from
    each other and from its support set."""
    sizes = dict(zip(("train", "validation", "test"), self.heldout_sizes))
    if split not in sizes:
      raise ValueError(f"synthetic: unknown split {split!r}; expected one of {list(sizes)}.")
    start = self.k + sum(list(sizes.values())[:list(sizes).index(split)])
    return tuple((x, member(x)) for x in self._heldout_strings(member)[start:start + sizes[split]])

  def sequence_lengths(self, mode: str = "hyper") -> Dict[str, int]:
    """Lengths that fit every example under the byte vocabulary (one token per letter)."""
    per_example = 2 + 2 * self.max_len
    query = self.max_len + 1
    if mode == "hyper":
      return {"hyper_inputs": self.k * per_example + 1, "inputs": query, "targets": query}
    if mode == "icl":
      return {"inputs": self.k * per_example + query + 2, "targets": query}
    if mode == "oracle":
      longest = max(len(m.description) for m in self.members)
      return {"inputs": longest + query + 2, "targets": query}
    return {"inputs": query, "targets": query}

  # --------------------------------------------------- training rows, in TF --

  def train_dataset(self, split: str, num_examples: int) -> tf.data.Dataset:
    """Rows for training members, made in TF from their index: a random member, K+Q
    distinct strings, the last Q the queries (`inputs` / `targets` are [Q] strings when
    queries_per_task Q > 1, else scalars). Deterministic in (seed, split)."""
    members = self.train_members
    a = len(self.alphabet)
    tables = np.tile(np.arange(a, dtype=np.int32), (len(members), 1))
    index = {c: i for i, c in enumerate(self.alphabet)}
    for m, member in enumerate(members):
      for src, dst in member.subs:
        tables[m, index[src]] = index[dst]
    tables = tf.constant(tables)
    reverse = tf.constant([m.reverse for m in members])
    names = tf.constant([m.name for m in members])
    descriptions = tf.constant([m.description for m in members])
    chars = tf.constant(list(self.alphabet))
    base = tf.constant(_seed_pair("train_rows", self.seed, split), tf.int64)
    q = self.queries_per_task
    n, k, max_len = self.k + q, self.k, self.max_len

    rows_per_seed = 256  # generated together: per-element tf.data work is the bottleneck

    def block(b):
      """Rows b*256 ... b*256+255, vectorized."""
      seed = tf.stack([base[0], base[1] + b])
      s_m, s_len, s_ids = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
      m = tf.random.stateless_uniform([rows_per_seed], s_m, 0, len(members), tf.int32)
      lengths = tf.random.stateless_uniform([rows_per_seed * n], s_len, self.min_len,
                                            max_len + 1, tf.int32)
      ids = tf.random.stateless_uniform([rows_per_seed * n, max_len], s_ids, 0, a, tf.int32)
      member = tf.repeat(m, n)
      out = tf.gather(tf.gather(tables, member), ids, batch_dims=1)
      out = tf.where(tf.gather(reverse, member)[:, None],
                     tf.reverse_sequence(out, lengths, seq_axis=1, batch_axis=0), out)

      def to_strings(x):
        x = tf.gather(chars, tf.RaggedTensor.from_tensor(x, lengths=lengths))
        return tf.reshape(tf.strings.reduce_join(x, axis=1), [rows_per_seed, n])

      xs, ys = to_strings(ids), to_strings(out)
      # Keep rows whose K+Q inputs are distinct: no query is among its support.
      same = tf.reduce_sum(tf.cast(tf.equal(xs[:, :, None], xs[:, None, :]), tf.int32), [1, 2])
      keep = tf.equal(same, n)
      rows = {"task_name": tf.gather(names, m), "description": tf.gather(descriptions, m),
              "inputs": xs[:, k:] if q > 1 else xs[:, k],
              "targets": ys[:, k:] if q > 1 else ys[:, k], fewshot.SUPPORT_INPUTS: xs[:, :k],
              fewshot.SUPPORT_TARGETS: ys[:, :k]}
      return tf.data.Dataset.from_tensor_slices(
          {key: tf.boolean_mask(v, keep) for key, v in rows.items()})

    num_blocks = -(-num_examples // rows_per_seed)
    ds = tf.data.Dataset.range(num_blocks).interleave(
        block, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.take(num_examples)


class _TrainSource(seqio.FunctionDataSource):
  """Training-member rows generated in TF; sizes known without generating."""

  def __init__(self, family: Family, sizes: Mapping[str, int]):
    def dataset_fn(split: str, shuffle_files: bool, seed=None):
      del shuffle_files, seed  # rows follow from the family seed; the Task shuffles them
      return family.train_dataset(split, sizes[split])

    super().__init__(dataset_fn, splits=tuple(sizes), num_input_examples=dict(sizes))


def _heldout_rows(family: Family, member: Member, split: str):
  support = family.support(member)
  return [{"task_name": member.name, "description": member.description, "inputs": x,
           "targets": y, fewshot.SUPPORT_INPUTS: [s[0] for s in support],
           fewshot.SUPPORT_TARGETS: [s[1] for s in support]}
          for x, y in family.queries(member, split)]


_COLUMNS = {"task_name": sources.STRING, "description": sources.STRING,
            "inputs": sources.STRING, "targets": sources.STRING,
            fewshot.SUPPORT_INPUTS: sources.STRINGS, fewshot.SUPPORT_TARGETS: sources.STRINGS}

FAMILY = Family()


def heldout_task_name(i: int, mode: str = "hyper") -> str:
  return pipelines.task_name(PREFIX, mode, f"heldout_{i:03d}")


def register(seed: int = 0, num_train: int = 4096, num_heldout: int = 64, k: int = 6,
             vocabulary="byte", modes: Sequence[str] = pipelines.MODES,
             train_examples: int = 4096 * 64, validation_examples: int = 2048,
             reversal: bool = False, queries_per_task: int = 1) -> Family:
  """Registers the family's tasks and mixtures (see the module docstring); returns it.

  Idempotent: calling again (e.g. with another seed) replaces the tasks. The default
  family is registered when `tasks` is imported. `queries_per_task` Q > 1 also registers
  `synthetic_train_q<Q>`: the hyper-mode training rows as Q queries of one member sharing
  its K examples, for one hypermodel forward per Q queries (`fewshot.group_queries`;
  `train_examples` then counts rows). A name of its own, so that `synthetic_train` means
  one query per row in every run of a process, whatever was registered before.
  """
  global FAMILY
  family = Family(seed=seed, num_train=num_train, num_heldout=num_heldout, k=k,
                  reversal=reversal)
  postprocess, metric_fns = pipelines.metrics(pipelines.GENERATIVE)
  vocabulary = vocab_lib.as_vocabulary(vocabulary)
  source = f"synthetic(seed={seed})"
  sizes = {"train": train_examples, "validation": validation_examples}
  for mode in modes:
    features = pipelines.output_features(mode, vocabulary)
    steps = pipelines.preprocessors(mode, k=k, source=source)
    registry.add_task(
        pipelines.task_name(PREFIX, mode, "train"), source=_TrainSource(family, sizes),
        output_features=features, preprocessors=steps, postprocess_fn=postprocess,
        metric_fns=metric_fns)
    if mode == "hyper" and queries_per_task > 1:
      q = queries_per_task
      registry.add_task(
          pipelines.task_name(PREFIX, mode, f"train_q{q}"), queries_per_task=q,
          source=_TrainSource(dataclasses.replace(family, queries_per_task=q), sizes),
          output_features=pipelines.output_features(mode, vocabulary, q),
          preprocessors=pipelines.preprocessors(mode, k=k, source=source, queries_per_task=q),
          postprocess_fn=postprocess, metric_fns=metric_fns)
    names = []
    for i, member in enumerate(family.heldout_members):
      names.append(heldout_task_name(i, mode))
      registry.add_task(
          names[-1],
          source=sources.RowsSource(
              functools.partial(_heldout_rows, family, member),
              splits=("train", "validation", "test"), columns=_COLUMNS,
              task=names[-1]),
          output_features=features, preprocessors=steps, postprocess_fn=postprocess,
          metric_fns=metric_fns)
    registry.add_mixture(pipelines.task_name(PREFIX, mode, "heldout"), names)
  FAMILY = family
  return family


registry.gin_configurable(register, "tasks.synthetic")
register()
