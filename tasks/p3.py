"""P3 (bigscience/P3) from its TFRecord layout: the T0 training mixture and held-out set.

Layout: `<data_dir>/data/<prompted task>/{train,validation,test}.tfrecord-*` (or
`<data_dir>/<prompted task>/...`), tf.train.Examples with `inputs_pretokenized` and
`targets_pretokenized` (text: we retokenize with our vocabulary) and, for multiple-choice
prompts, `answer_choices`. `*_score_eval` directories (P3's own pre-expanded rank rows)
are skipped: rank classification is done here from `answer_choices`.

  p3_<prompted task>   one task per prompted task; training draws K support examples per
                       query from the task's own examples; held-out tasks use one fixed
                       K-shot set from `support_split` and score choices by rank
                       classification (generative otherwise)
  p3_t0_train          mixture of the T0 training datasets' prompted tasks
  p3_t0_eval           mixture of the held-out ones (ANLI R1-R3, HellaSwag, CB, COPA, RTE,
                       WiC, WSC, WinoGrande), evaluated on `eval_split`
"""
import functools
import os
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from hypert5.data import fewshot
from hypert5.data import pipelines
from hypert5.data import registry
from hypert5.data import sources
from hypert5.data import vocab as vocab_lib
from hypert5.data.errors import DataError, where

PREFIX = "p3"

# T0's training datasets (Sanh et al. 2022, Figure 2), as P3 directory-name prefixes.
T0_TRAIN_DATASETS = (
    "commonsense_qa", "dream", "quail", "quartz", "social_i_qa", "wiqa", "cosmos_qa", "qasc",
    "quarel", "sciq", "wiki_hop_original", "adversarial_qa_dbidaf", "adversarial_qa_dbert",
    "adversarial_qa_droberta", "quoref", "ropes", "duorc_SelfRC", "duorc_ParaphraseRC",
    "kilt_tasks_hotpotqa", "wiki_qa", "common_gen", "wiki_bio", "amazon_polarity",
    "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full", "cnn_dailymail_3.0.0",
    "gigaword", "multi_news", "samsum", "xsum", "ag_news", "dbpedia_14", "trec",
    "glue_mrpc", "paws_labeled_final", "glue_qqp",
)
# T0's held-out evaluation datasets (StoryCloze needs a manual download and is left out).
T0_EVAL_DATASETS = (
    "anli", "hellaswag", "super_glue_cb", "super_glue_copa", "super_glue_rte",
    "super_glue_wic", "super_glue_wsc.fixed", "winogrande_winogrande_xl",
)

REQUIRED = ("inputs_pretokenized", "targets_pretokenized")
CHOICES = "answer_choices"
_MISSING = "\x00missing"


def _dataset_of(prompted: str, datasets: Sequence[str]) -> Optional[str]:
  """The dataset a prompted-task directory belongs to (the longest matching prefix)."""
  matches = [d for d in datasets if prompted == d or prompted.startswith(d + "_")]
  return max(matches, key=len) if matches else None


def _check_file(path: str, task: str, features: Sequence[str]) -> None:
  """The file's first record must have every feature (a cheap check with a clear error)."""
  records = list(tf.data.TFRecordDataset(path).take(1).as_numpy_iterator())
  if not records:
    raise DataError(f"{where(path, task)}the file is empty (no records). Re-download it "
                    "or remove it.")
  try:
    example = tf.train.Example.FromString(records[0])
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{where(path, task)}not a TFRecord of tf.train.Example ({e}).") from e
  for name in features:
    if name not in example.features.feature:
      raise DataError(f"{where(path, task, name)}missing from the records. P3 examples need "
                      f"{list(features)}; check the file is from bigscience/P3.")


def _read_file(path: tf.Tensor, *, task: str, with_choices: bool) -> tf.data.Dataset:
  """Records -> {task_name, inputs, targets[, answer_choices]}; a record missing a
  feature fails with the file and feature named."""
  spec = {k: tf.io.FixedLenFeature([], tf.string, default_value=_MISSING) for k in REQUIRED}
  if with_choices:
    spec[CHOICES] = tf.io.VarLenFeature(tf.string)

  def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    checks = [tf.debugging.Assert(tf.not_equal(ex[k], _MISSING), [
        path, f": task {task}: field {k!r}: missing from a record. Fix or re-download the file."])
              for k in REQUIRED]
    with tf.control_dependencies(checks):
      out = {"task_name": tf.constant(task), "inputs": tf.strings.strip(ex[REQUIRED[0]]),
             "targets": tf.strings.strip(ex[REQUIRED[1]])}
    if with_choices:
      out[CHOICES] = tf.strings.strip(tf.sparse.to_dense(ex[CHOICES]))
    return out

  return tf.data.TFRecordDataset(path).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


class _P3Source(sources.CheckedFileSource):
  """A prompted task's TFRecords; eval splits get one fixed K-shot set and answer choices."""

  def __init__(self, directory: str, task: str, splits: Sequence[str], *, k: int,
               eval_splits: Sequence[str], support_split: str, support_pool: int, seed: int,
               multiple_choice: bool):
    self._task, self._k, self._seed = task, k, seed
    self._eval_splits = set(eval_splits)
    self._support_split = support_split if support_split in splits else sorted(eval_splits)[0]
    self._support_pool = support_pool
    self._multiple_choice = multiple_choice
    self._support = None
    required = REQUIRED + ((CHOICES,) if multiple_choice else ())
    super().__init__(
        read_file_fn=functools.partial(_read_file, task=task, with_choices=multiple_choice),
        split_to_filepattern={s: os.path.join(directory, f"{s}.tfrecord-*") for s in splits},
        task=task, check_file=functools.partial(_check_file, task=task, features=required))

  def support(self):
    """The fixed K-shot set: `select_support` over the first `support_pool` examples."""
    if self._support is None:
      pool = super().get_dataset(self._support_split, shuffle=False).take(self._support_pool)
      pairs = [(ex["inputs"].decode(), ex["targets"].decode())
               for ex in pool.as_numpy_iterator()]
      self._support = fewshot.select_support(pairs, self._k, self._seed, self._task)
    return self._support

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
    ds = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                             **kwargs)
    if split not in self._eval_splits:  # training is generative: no choices, sampled support
      return ds.map(lambda ex: {k: v for k, v in ex.items() if k != CHOICES})
    return fewshot.fixed_support(ds, self.support) if self._k else ds


def _prompted_dir(data_dir: str) -> str:
  sub = os.path.join(data_dir, "data")
  return sub if tf.io.gfile.isdir(sub) else data_dir


def register(data_dir: str, k: int = 4, vocabulary=vocab_lib.DEFAULT_SPM_PATH,
             modes: Sequence[str] = ("hyper",),
             train_datasets: Sequence[str] = T0_TRAIN_DATASETS,
             eval_datasets: Sequence[str] = T0_EVAL_DATASETS,
             eval_split: str = "validation", support_split: str = "train",
             support_pool: int = 1024, pool_size: int = 1024, seed: int = 0,
             queries_per_task: int = 1) -> Dict[str, List[str]]:
  """Registers the P3 prompted tasks of the given datasets and the two mixtures.

  A prompted task of an eval dataset is multiple choice when its first `eval_split` record
  has `answer_choices`. `queries_per_task` > 1 makes each row of a training task Q of its
  examples sharing one sampled support set and one hypermodel forward
  (`fewshot.group_queries`); eval tasks keep one. Returns {"train": [...], "eval": [...]}
  hyper-mode task names.
  """
  fewshot.check_k(k)
  root = _prompted_dir(data_dir)
  if not tf.io.gfile.isdir(root):
    raise DataError(f"{where(data_dir)}not a directory. Point data_dir at a P3 checkout.")
  vocabulary = vocab_lib.as_vocabulary(vocabulary)
  chosen = {"train": [], "eval": []}
  for prompted in sorted(tf.io.gfile.listdir(root)):
    prompted = prompted.rstrip("/")
    directory = os.path.join(root, prompted)
    if prompted.endswith("_score_eval") or not tf.io.gfile.isdir(directory):
      continue
    group = ("eval" if _dataset_of(prompted, eval_datasets)
             else "train" if _dataset_of(prompted, train_datasets) else None)
    if group is None:
      continue
    splits = [s for s in ("train", "validation", "test")
              if tf.io.gfile.glob(os.path.join(directory, f"{s}.tfrecord-*"))]
    if not splits:
      raise DataError(f"{where(directory)}no {{train,validation,test}}.tfrecord-* files. "
                      "Check the P3 download.")
    name = registry.sanitize(prompted)
    task = pipelines.task_name(PREFIX, "hyper", name)
    eval_splits = [eval_split] if group == "eval" and eval_split in splits else []
    multiple_choice = bool(eval_splits) and _has_choices(directory, eval_split, task)
    source = _P3Source(directory, prompted, splits, k=k, eval_splits=eval_splits,
                       support_split=support_split, support_pool=support_pool, seed=seed,
                       multiple_choice=multiple_choice)
    names = pipelines.register(
        PREFIX, name, source,
        kind=pipelines.RANK if multiple_choice else pipelines.GENERATIVE,
        vocabulary=vocabulary, k=k, modes=modes, pool_size=pool_size, source_desc=directory,
        queries_per_task=queries_per_task if group == "train" else 1)
    chosen[group].append(names)
  pipelines.register_mixtures(PREFIX, "t0_train", chosen["train"], modes)
  pipelines.register_mixtures(PREFIX, "t0_eval", chosen["eval"], modes)
  return {group: [n["hyper"] for n in names] for group, names in chosen.items()
          if "hyper" in modes}


def _has_choices(directory: str, split: str, task: str) -> bool:
  files = sorted(tf.io.gfile.glob(os.path.join(directory, f"{split}.tfrecord-*")))
  _check_file(files[0], task, REQUIRED)
  record = next(tf.data.TFRecordDataset(files[0]).take(1).as_numpy_iterator())
  feature = tf.train.Example.FromString(record).features.feature.get(CHOICES)
  return feature is not None and len(feature.bytes_list.value) > 0


registry.gin_configurable(register, "tasks.p3")
