"""Readers for local (or gs://) task files and seqio sources built from Python rows.

Every reader fails with a `DataError` naming the file, the task and what is wrong:
malformed JSON (with line and column), an empty file, a missing field.
"""
import gzip
import json
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from hypert5.data.errors import DataError, where


def _read_bytes(path: str, task: Optional[str]) -> bytes:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except tf.errors.NotFoundError as e:
    raise DataError(f"{where(path, task)}file not found. Check the data path.") from e
  if path.endswith(".gz"):
    data = gzip.decompress(data)
  if not data.strip():
    raise DataError(f"{where(path, task)}the file is empty. Re-download or remove it.")
  return data


def read_json(path: str, task: Optional[str] = None) -> Any:
  """One JSON document (e.g. an S-NI task or a BIG-bench task.json)."""
  text = _read_bytes(path, task).decode("utf-8")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{where(path, task)}malformed JSON at line {e.lineno} column {e.colno}: "
                    f"{e.msg}. Fix or re-download the file.") from e


def read_jsonl(path: str, task: Optional[str] = None) -> List[Any]:
  """One JSON object a line (blank lines skipped); `.gz` is decompressed."""
  rows = []
  # Split on "\n" only: str.splitlines() also splits on U+2028 and friends, which JSON
  # strings may hold unescaped.
  for n, line in enumerate(_read_bytes(path, task).decode("utf-8").split("\n"), start=1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise DataError(f"{where(path, task)}malformed JSON on line {n} column {e.colno}: "
                      f"{e.msg}. Fix or remove the line.") from e
  return rows


def require(obj: Mapping[str, Any], field: str, path: str, task: Optional[str],
            what: str = "", types=None) -> Any:
  """`obj[field]`, or a DataError naming the file, task, field (and `what` object)."""
  if not isinstance(obj, Mapping) or field not in obj:
    raise DataError(f"{where(path, task, field)}missing{' in ' + what if what else ''}. "
                    "Every entry needs it; fix the file or pick the right data layout.")
  value = obj[field]
  if types is not None and not isinstance(value, types):
    raise DataError(f"{where(path, task, field)}{what + ': ' if what else ''}expected "
                    f"{_type_names(types)}, got {type(value).__name__}.")
  return value


def _type_names(types) -> str:
  types = types if isinstance(types, tuple) else (types,)
  return " or ".join(t.__name__ for t in types)


# ------------------------------------------------------------ rows -> tf.data --

STRING = "string"
STRINGS = "strings"  # a list of strings per example
INT = "int"
INTS = "ints"  # a list of ints per example


def rows_to_dataset(rows: Sequence[Mapping[str, Any]],
                    columns: Mapping[str, str]) -> tf.data.Dataset:
  """Column-wise `from_tensor_slices` over Python rows (much faster than a generator).

  `columns` maps each feature to STRING, STRINGS, INT or INTS; every row must have them.
  """
  data = {}
  for name, kind in columns.items():
    values = [row[name] for row in rows]
    if kind == STRING:
      data[name] = tf.constant(values, tf.string, shape=[len(values)])
    elif kind == INT:
      data[name] = tf.constant(values, tf.int32, shape=[len(values)])
    elif kind in (STRINGS, INTS):
      data[name] = tf.RaggedTensor.from_row_lengths(
          tf.constant([v for vs in values for v in vs],
                      tf.string if kind == STRINGS else tf.int32),
          tf.constant([len(vs) for vs in values], tf.int64))
    else:
      raise ValueError(f"column {name}: unknown kind {kind!r}.")
  ds = tf.data.Dataset.from_tensor_slices(data)
  # Ragged slices come out as ragged-rank-0 specs; make them plain 1-D tensors.
  return ds.map(lambda ex: {k: tf.convert_to_tensor(v) if not isinstance(v, tf.RaggedTensor)
                            else v.to_tensor() for k, v in ex.items()})


class RowsSource(seqio.FunctionDataSource):
  """A seqio source over rows that a Python function loads (lazily, once per split).

  `load(split)` returns a list of dicts; `columns` gives their features (STRING, STRINGS
  or INT), or is inferred from the first row. Registering a task with this source reads
  nothing; the first `get_dataset` (or `num_input_examples`) for a split does. An empty
  split is a DataError naming `task`.
  """

  def __init__(self, load: Callable[[str], Sequence[Mapping[str, Any]]],
               splits: Iterable[str], columns: Optional[Mapping[str, str]] = None,
               task: Optional[str] = None):
    self._load_fn = load
    self._columns = None if columns is None else dict(columns)
    self._task = task
    self._cache = {}

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
      del shuffle_files, seed  # rows are small; the Task shuffles examples
      rows = self.rows(split)
      return rows_to_dataset(rows, self._columns or columns_of(rows))

    super().__init__(dataset_fn=dataset_fn, splits=splits)

  def rows(self, split: str) -> Sequence[Mapping[str, Any]]:
    """The loaded rows of a split (for inspection and tests)."""
    if split not in self._cache:
      rows = list(self._load_fn(split))
      if not rows:
        raise DataError(f"{where(task=self._task)}split {split!r} has no examples. Check "
                        "the data files (and caps such as max_examples).")
      self._cache[split] = rows
    return self._cache[split]

  def num_input_examples(self, split: str) -> Optional[int]:
    return len(self.rows(split))


def columns_of(rows: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
  """Infers STRING / STRINGS / INT / INTS columns from the first row."""
  if not rows:
    return {}
  kinds = {}
  for name, value in rows[0].items():
    if isinstance(value, (list, tuple)):
      kinds[name] = INTS if value and isinstance(value[0], (bool, int)) else STRINGS
    elif isinstance(value, (bool, int)):
      kinds[name] = INT
    else:
      kinds[name] = STRING
  return kinds


class CheckedFileSource(seqio.FileDataSource):
  """A seqio FileDataSource that checks its files before reading them.

  On the first `get_dataset` of a split, raises a DataError naming the task when no file
  matches, and runs `check_file(path)` on each file (e.g. empty file, missing feature).
  """

  def __init__(self, read_file_fn, split_to_filepattern, *, task: str,
               check_file: Optional[Callable[[str], None]] = None, **kwargs):
    super().__init__(read_file_fn=read_file_fn, split_to_filepattern=split_to_filepattern,
                     **kwargs)
    self._task = task
    self._check_file = check_file
    self._checked = set()

  def list_shards(self, split: str) -> Sequence[str]:
    files = super().list_shards(split)
    if not files:
      raise DataError(f"{where(task=self._task)}split {split}: no file matches "
                      f"{self._split_to_filepattern[split]!r}. Check the data path.")
    if self._check_file is not None and split not in self._checked:
      for path in files:
        self._check_file(path)
      self._checked.add(split)
    return files


def check_not_empty(task: str) -> Callable[[str], None]:
  def check(path: str) -> None:
    if tf.io.gfile.stat(path).length == 0:
      raise DataError(f"{where(path, task)}the file is empty. Remove it or re-download it.")
  return check
