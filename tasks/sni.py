"""Super-NaturalInstructions from a local checkout of allenai/natural-instructions.

Layout: `<data_dir>/tasks/<task>.json` and `<data_dir>/splits/default/{train,test}_tasks.txt`
(a flat directory of task JSON files works too, with explicit task lists). Each task is a
seqio task whose hyper input is its Definition plus its first K positive examples (the
same for every query of the task, as in the paper); `inputs` is an instance's input;
`targets` its first output, with all outputs kept as references for ROUGE-L.

  sni_<task>        splits: train (all instances, or `max_train_instances`), test and
                    validation (the first `max_test_instances`; S-NI has one eval split)
  sni_train         mixture of the train tasks;  sni_test: of the test tasks
Baseline modes insert the mode: `sni_icl_<task>`, `sni_icl_train`, ...
"""
import os
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from hypert5.data import fewshot
from hypert5.data import pipelines
from hypert5.data import registry
from hypert5.data import sources
from hypert5.data import vocab as vocab_lib
from hypert5.data.errors import DataError, where

PREFIX = "sni"


def _outputs(value, path, task, what) -> List[str]:
  outs = [value] if isinstance(value, str) else value
  if not isinstance(outs, list) or not outs or not all(isinstance(o, str) for o in outs):
    raise DataError(f"{where(path, task, 'output')}{what}: expected a string or a non-empty "
                    "list of strings.")
  return outs


def load_task(path: str, task: str, k: int) -> Dict:
  """Definition, K positive examples and instances of one S-NI task file, validated."""
  obj = sources.read_json(path, task)
  definition = sources.require(obj, "Definition", path, task, types=(str, list))
  if isinstance(definition, list):  # v2.8 and later: a list of strings
    if not all(isinstance(d, str) for d in definition):
      raise DataError(f"{where(path, task, 'Definition')}expected a string or a list of "
                      "strings.")
    definition = "\n".join(definition)
  positives = sources.require(obj, "Positive Examples", path, task, types=list)
  if len(positives) < k:
    raise DataError(f"{where(path, task, 'Positive Examples')}has {len(positives)} "
                    f"examples but k={k} are needed. Lower k for S-NI.")
  support = []
  for i, ex in enumerate(positives[:k]):
    what = f"Positive Examples[{i}]"
    inp = sources.require(ex, "input", path, task, what, types=str)
    support.append((inp, _outputs(sources.require(ex, "output", path, task, what), path,
                                  task, what)[0]))
  instances = sources.require(obj, "Instances", path, task, types=list)
  rows = []
  for i, ex in enumerate(instances):
    what = f"Instances[{i}]"
    inp = sources.require(ex, "input", path, task, what, types=str)
    rows.append((inp, _outputs(sources.require(ex, "output", path, task, what), path,
                               task, what)))
  queries = fewshot.without_support(rows, support)
  if not queries:
    raise DataError(f"{where(path, task, 'Instances')}no instance left besides the "
                    f"{k} positive examples. The task needs instances to train or test on.")
  return {"definition": definition, "support": support, "instances": queries}


def _rows(path: str, task: str, k: int, max_train: Optional[int], max_test: int,
          split: str):
  data = load_task(path, task, k)
  limit = max_train if split == "train" else max_test
  instances = data["instances"][:limit]
  return [{"task_name": task, "inputs": inp, "targets": outs[0], "references": outs,
           "hyper_prefix": data["definition"], "description": data["definition"],
           fewshot.SUPPORT_INPUTS: [s[0] for s in data["support"]],
           fewshot.SUPPORT_TARGETS: [s[1] for s in data["support"]]}
          for inp, outs in instances]


_COLUMNS = {"task_name": sources.STRING, "inputs": sources.STRING,
            "targets": sources.STRING, "references": sources.STRINGS,
            "hyper_prefix": sources.STRING, "description": sources.STRING,
            fewshot.SUPPORT_INPUTS: sources.STRINGS, fewshot.SUPPORT_TARGETS: sources.STRINGS}


def _read_list(path: str) -> List[str]:
  with tf.io.gfile.GFile(path) as f:
    return [line.strip() for line in f if line.strip()]


def register(data_dir: str, k: int = 2, vocabulary=vocab_lib.DEFAULT_SPM_PATH,
             modes: Sequence[str] = ("hyper",),
             train_tasks: Optional[Sequence[str]] = None,
             test_tasks: Optional[Sequence[str]] = None,
             split_dir: str = "splits/default", max_train_instances: Optional[int] = None,
             max_test_instances: int = 100,
             queries_per_task: int = 1) -> Dict[str, List[str]]:
  """Registers every S-NI task file under `data_dir` and the sni_train / sni_test mixtures.

  Task lists come from `train_tasks` / `test_tasks`, else from `<split_dir>/{train,test}
  _tasks.txt`; without a train list, every task that is not a test task trains.
  `queries_per_task` > 1 makes each row of a training task Q of its instances sharing its
  positive examples and one hypermodel forward (`fewshot.group_queries`); test tasks keep
  one. Returns the mixtures' hyper-mode task names, {"train": [...], "test": [...]}.
  """
  fewshot.check_k(k)
  task_dir = os.path.join(data_dir, "tasks")
  if not tf.io.gfile.isdir(task_dir):
    task_dir = data_dir
  files = {os.path.basename(p)[:-len(".json")]: p
           for p in tf.io.gfile.glob(os.path.join(task_dir, "*.json"))}
  if not files:
    raise DataError(f"{where(data_dir)}no S-NI task files (*.json) in {task_dir}. Point "
                    "data_dir at a natural-instructions checkout.")
  lists = {}
  for split, given in (("test", test_tasks), ("train", train_tasks)):
    list_file = os.path.join(data_dir, split_dir, f"{split}_tasks.txt")
    if given is not None:
      lists[split] = list(given)
    elif tf.io.gfile.exists(list_file):
      lists[split] = _read_list(list_file)
    else:  # no list: train on every task that is not a test task
      lists[split] = [] if split == "test" else sorted(set(files) - set(lists["test"]))
  for split, names in lists.items():
    missing = [n for n in names if n not in files]
    if missing:
      raise DataError(f"{where(data_dir)}{split} tasks without a file in {task_dir}: "
                      f"{missing[:5]}{' ...' if len(missing) > 5 else ''}. Fix the task list.")

  vocabulary = vocab_lib.as_vocabulary(vocabulary)
  registered = {}
  for task in sorted(set(lists["train"]) | set(lists["test"])):
    path = files[task]
    load = lambda split, path=path, task=task: _rows(
        path, task, k, max_train_instances, max_test_instances, split)
    name = registry.sanitize(task)
    registered[task] = pipelines.register(
        PREFIX, name,
        sources.RowsSource(load, ("train", "validation", "test"), _COLUMNS,
                           task=f"{PREFIX}_{name}"),
        kind=pipelines.GENERATIVE, vocabulary=vocabulary, k=k, modes=modes,
        source_desc=path,
        queries_per_task=1 if task in lists["test"] else queries_per_task)
  for split in ("train", "test"):
    pipelines.register_mixtures(PREFIX, split, [registered[t] for t in lists[split]], modes)
  return {split: [pipelines.task_name(PREFIX, "hyper", registry.sanitize(t)) for t in names]
          for split, names in sorted(lists.items(), reverse=True)}


registry.gin_configurable(register, "tasks.sni")
