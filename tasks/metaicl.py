"""MetaICL (Min et al. 2022) from its JSONL layout and train/test task splits.

Layout: `<data_dir>/<task>/<task>_<k>_<seed>_<split>.jsonl`, one object a line with
`input`, `output` and `options` (answer choices; empty for generative tasks). The task
split is MetaICL's `config/<setting>.json` ({"train": [...], "test": [...]}) or lists.

  metaicl_<task>   train tasks: the `<task>_<train_k>_<train_seed>_train.jsonl` examples,
                   K support examples sampled per query. Test tasks: MetaICL's own K-shot
                   file `<task>_<test_k>_<test_seed>_train.jsonl` is the fixed support set
                   (identical on every host), queries from `..._test.jsonl` (split test)
                   and `..._dev.jsonl` (validation); rank classification over `options`.
  metaicl_train    mixture of the train tasks;  metaicl_test: of the test tasks
"""
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Union

import tensorflow as tf

from hypert5.data import fewshot
from hypert5.data import pipelines
from hypert5.data import registry
from hypert5.data import sources
from hypert5.data import vocab as vocab_lib
from hypert5.data.errors import DataError, where
from hypert5.data.preprocessors import ANSWER_CHOICES

PREFIX = "metaicl"
_FILE = re.compile(r"^(?P<task>.+)_(?P<k>\d+)_(?P<seed>\d+)_(?P<split>train|dev|test)\.jsonl$")


def _files(data_dir: str, task: str) -> Dict[tuple, str]:
  """{(k, seed, split): path} of a task's files."""
  out = {}
  for path in tf.io.gfile.glob(os.path.join(data_dir, task, f"{task}_*.jsonl")):
    m = _FILE.match(os.path.basename(path))
    if m and m["task"] == task:
      out[(int(m["k"]), int(m["seed"]), m["split"])] = path
  return out


def load_examples(path: str, task: str, with_options: bool) -> List[Dict]:
  """A MetaICL JSONL file's examples as rows, validated."""
  rows = []
  for i, obj in enumerate(sources.read_jsonl(path, task)):
    what = f"line {i + 1}"
    inp = sources.require(obj, "input", path, task, what, types=str)
    out = sources.require(obj, "output", path, task, what, types=str)
    row = {"task_name": task, "inputs": inp.strip(), "targets": out.strip()}
    if with_options:
      options = sources.require(obj, "options", path, task, what, types=list)
      if out.strip() not in [o.strip() for o in options]:
        raise DataError(f"{where(path, task, 'output')}{what}: {out!r} is not one of its "
                        "options. Fix the example.")
      row[ANSWER_CHOICES] = [o.strip() for o in options]
    rows.append(row)
  return rows


def _first_options(path: str, task: str) -> bool:
  rows = sources.read_jsonl(path, task)
  return bool(rows and isinstance(rows[0], dict) and rows[0].get("options"))


def _train_rows(path, task, split):
  del split
  return load_examples(path, task, with_options=False)


def _test_rows(files: Mapping[str, str], support_path: str, task: str, k: int, seed: int,
               multiple_choice: bool, split: str):
  pairs = [(r["inputs"], r["targets"])
           for r in load_examples(support_path, task, with_options=False)]
  support = fewshot.select_support(pairs, k, seed, task) if len(pairs) > k else tuple(pairs)
  if len(support) < k:
    raise DataError(f"{where(support_path, task)}{len(support)} examples but k={k}. Use "
                    "the K-shot file of a larger k, or lower k.")
  rows = load_examples(files[split], task, with_options=multiple_choice)
  keys = {fewshot.content_key(s[0]) for s in support}
  rows = [r for r in rows if fewshot.content_key(r["inputs"]) not in keys]
  for r in rows:
    r[fewshot.SUPPORT_INPUTS] = [s[0] for s in support]
    r[fewshot.SUPPORT_TARGETS] = [s[1] for s in support]
  return rows


def _split_lists(split_config, train_tasks, test_tasks):
  if split_config is not None:
    config = (split_config if isinstance(split_config, Mapping)
              else sources.read_json(split_config))
    path = split_config if isinstance(split_config, str) else "split_config"
    return (list(sources.require(config, "train", path, None, types=list)),
            list(sources.require(config, "test", path, None, types=list)))
  return list(train_tasks or []), list(test_tasks or [])


def register(data_dir: str, k: int = 16, vocabulary=vocab_lib.DEFAULT_SPM_PATH,
             modes: Sequence[str] = ("hyper",),
             split_config: Optional[Union[str, Mapping]] = None,
             train_tasks: Optional[Sequence[str]] = None,
             test_tasks: Optional[Sequence[str]] = None,
             train_seed: int = 100, test_k: int = 16, test_seed: int = 100,
             pool_size: int = 1024, seed: int = 0,
             queries_per_task: int = 1) -> Dict[str, List[str]]:
  """Registers MetaICL train and test tasks and the metaicl_train / metaicl_test mixtures.

  The split is `split_config` (a MetaICL config JSON path or dict), else the lists. A
  train task reads its `<task>_<k>_<train_seed>_train.jsonl` with the largest k; a test
  task its `<task>_<test_k>_<test_seed>_{train,dev,test}.jsonl`. `queries_per_task` > 1
  makes each row of a train task Q of its examples sharing one sampled support set and one
  hypermodel forward (`fewshot.group_queries`); test tasks keep one. Returns hyper-mode
  names.
  """
  fewshot.check_k(k)
  train_list, test_list = _split_lists(split_config, train_tasks, test_tasks)
  if not train_list and not test_list:
    raise ValueError("metaicl.register: no tasks; pass split_config or train/test_tasks.")
  vocabulary = vocab_lib.as_vocabulary(vocabulary)
  chosen = {"train": [], "test": []}
  for task in train_list:
    files = _files(data_dir, task)
    train_files = sorted((kk, p) for (kk, s, sp), p in files.items()
                         if s == train_seed and sp == "train")
    if not train_files:
      raise DataError(f"{where(os.path.join(data_dir, task), task)}no "
                      f"{task}_<k>_{train_seed}_train.jsonl file. Check data_dir and "
                      "train_seed.")
    path = train_files[-1][1]
    name = registry.sanitize(task)
    load = lambda split, path=path, task=task: _train_rows(path, task, split)
    source = sources.RowsSource(load, ("train",), task=f"{PREFIX}_{name}")
    chosen["train"].append(pipelines.register(
        PREFIX, name, source, kind=pipelines.GENERATIVE, vocabulary=vocabulary, k=k,
        modes=modes, pool_size=pool_size, source_desc=path, queries_per_task=queries_per_task))
  for task in test_list:
    files = _files(data_dir, task)
    support_path = files.get((test_k, test_seed, "train"))
    if support_path is None or (test_k, test_seed, "test") not in files:
      raise DataError(f"{where(os.path.join(data_dir, task), task)}needs "
                      f"{task}_{test_k}_{test_seed}_train.jsonl (the K-shot set) and "
                      f"..._test.jsonl. Check data_dir, test_k and test_seed.")
    split_files = {"test": files[(test_k, test_seed, "test")]}
    if (test_k, test_seed, "dev") in files:
      split_files["validation"] = files[(test_k, test_seed, "dev")]
    multiple_choice = _first_options(split_files["test"], task)
    name = registry.sanitize(task)
    load = (lambda split, sf=split_files, sp=support_path, task=task, mc=multiple_choice:
            _test_rows(sf, sp, task, k, seed, mc, split))
    source = sources.RowsSource(load, tuple(split_files), task=f"{PREFIX}_{name}")
    chosen["test"].append(pipelines.register(
        PREFIX, name, source, kind=pipelines.RANK if multiple_choice else pipelines.GENERATIVE,
        vocabulary=vocabulary, k=k, modes=modes, pool_size=pool_size,
        source_desc=split_files["test"]))
  for split, names in chosen.items():
    pipelines.register_mixtures(PREFIX, split, names, modes)
  return {split: [n["hyper"] for n in names] for split, names in chosen.items()
          if "hyper" in modes}


registry.gin_configurable(register, "tasks.metaicl")
