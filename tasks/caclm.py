"""Hyperpretraining tasks: CACLM over C4 (TFDS) or over any local text / JSONL files.

Each document stream is tokenized, joined and cut into spans of 4·S tokens, and each span
is cut at three random points into A|B|C|D: the hypermodel reads A <eos> D, the frozen T5
reads B and is trained to continue it with C (`hypert5.data.preprocessors.caclm_split`).

  c4_caclm     TFDS `c4/en:3.1.0` (train, validation); registered on import with T5's
               vocabulary, re-register with `register_c4(...)` to change it.
  text_caclm   `register_text("corpus/*.txt", ...)`: `.txt` files (lines grouped into
               documents) and `.jsonl` / `.json` files (one document a line, field `text`).
"""
import functools
import json
from typing import Optional, Sequence, Union

import seqio
import tensorflow as tf

from hypert5.data import features as features_lib
from hypert5.data import preprocessors as prep
from hypert5.data import registry
from hypert5.data import sources
from hypert5.data import vocab as vocab_lib
from hypert5.data.errors import DataError, where

C4_TFDS_NAME = "c4/en:3.1.0"


def _steps(span_length: Optional[int]):
  return [functools.partial(prep.concat_and_chunk, text_key="text", span_length=span_length),
          prep.caclm_split, prep.trim_and_count]


def register_c4(vocabulary=vocab_lib.DEFAULT_SPM_PATH, name: str = "c4_caclm",
                tfds_name: str = C4_TFDS_NAME, tfds_data_dir: Optional[str] = None,
                span_length: Optional[int] = None) -> seqio.Task:
  """CACLM over C4 from TFDS (`tfds_data_dir` may be gs://)."""
  return registry.add_task(
      name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                                  splits=("train", "validation")),
      output_features=features_lib.hyper_features(vocabulary),
      preprocessors=_steps(span_length), metric_fns=[])


def _read_jsonl_file(path: tf.Tensor, *, task: str, text_key: str) -> tf.data.Dataset:
  """One document a line, the string under `text_key`; errors name file and line."""

  def parse(path_b, number, line):
    where_ = where(path_b.numpy().decode(), task, text_key)
    try:
      obj = json.loads(line.numpy().decode("utf-8"))
    except json.JSONDecodeError as e:
      raise DataError(f"{where(path_b.numpy().decode(), task)}malformed JSON on line "
                      f"{int(number) + 1}: {e.msg}. Fix or remove the line.") from e
    if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
      raise DataError(f"{where_}line {int(number) + 1} has no string {text_key!r}. Set "
                      "text_key to the field that holds the document.")
    return obj[text_key]

  lines = tf.data.TextLineDataset(path).enumerate()
  lines = lines.filter(lambda _, line: tf.strings.length(tf.strings.strip(line)) > 0)
  return lines.map(lambda i, line: {
      "text": tf.reshape(tf.py_function(parse, [path, i, line], tf.string), [])})


def _read_text_file(path: tf.Tensor, *, lines_per_doc: int) -> tf.data.Dataset:
  """Plain text: every `lines_per_doc` lines make a document."""
  lines = tf.data.TextLineDataset(path).batch(lines_per_doc)
  return lines.map(lambda ls: {"text": tf.strings.reduce_join(ls, separator="\n")})


def _is_jsonl(patterns: Sequence[str], task: str) -> bool:
  kinds = {p.endswith((".jsonl", ".json", ".jsonl*", ".json*")) for p in patterns}
  if len(kinds) > 1:
    raise ValueError(f"task {task}: patterns {list(patterns)} mix JSONL and plain text; "
                     "register one task per format.")
  return kinds.pop()


def register_text(patterns: Union[str, Sequence[str]], vocabulary=vocab_lib.DEFAULT_SPM_PATH,
                  name: str = "text_caclm",
                  validation_patterns: Optional[Union[str, Sequence[str]]] = None,
                  text_key: str = "text", lines_per_doc: int = 64,
                  span_length: Optional[int] = None) -> seqio.Task:
  """CACLM over local (or gs://) files matching `patterns` (globs).

  Patterns ending in `.jsonl` / `.json` name files of one JSON document a line, the text
  under `text_key`; other patterns name plain text, `lines_per_doc` lines a document (one
  task reads one format). Empty or malformed files raise a DataError naming the file and
  the task.
  """
  splits = {"train": patterns}
  if validation_patterns is not None:
    splits["validation"] = validation_patterns
  all_patterns = [p for ps in splits.values() for p in ([ps] if isinstance(ps, str) else ps)]
  if _is_jsonl(all_patterns, name):
    read = functools.partial(_read_jsonl_file, task=name, text_key=text_key)
  else:
    read = functools.partial(_read_text_file, lines_per_doc=lines_per_doc)
  return registry.add_task(
      name,
      source=sources.CheckedFileSource(read, splits, task=name,
                                       check_file=sources.check_not_empty(name)),
      output_features=features_lib.hyper_features(vocabulary),
      preprocessors=_steps(span_length), metric_fns=[])


registry.gin_configurable(register_c4, "tasks.caclm")
registry.gin_configurable(register_text, "tasks.caclm")
register_c4()
