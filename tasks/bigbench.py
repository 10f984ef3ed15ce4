"""BIG-bench JSON tasks: a directory of `task.json` files (as in the `bigbench` sdist) or
one JSONL (optionally .gz) of task objects.

A task whose every example has `target_scores` is multiple choice (choices = its keys,
correct = the top score), scored by rank classification; otherwise every example needs
`target` (a string or a list of references), scored by exact match and ROUGE-L. The
`task_prefix` is the hyper prefix. Splits: `train` (all examples, K support examples
sampled per query, generative targets); `validation` and `test` (the same examples less
one fixed K-shot set, which every query of the task gets).

  bigbench_<task>      `<task>` is the task path ("a/b" -> "a.b") or name
  bigbench_train       mixture of the training tasks
  bigbench_heldout     mixture of the held-out tasks (`heldout` list, or a seeded
                       `heldout_fraction` of the top-level tasks, subtasks together)

No training task is related to a held-out one: tasks that share a held-out task's
top-level task (its sibling subtasks), or whose name extends its name or is extended by it
(BIG-bench's translations: `entailed_polarity_hindi` of `entailed_polarity`), are left out
of training, and logged.
"""
import hashlib
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from hypert5.data import fewshot
from hypert5.data import pipelines
from hypert5.data import registry
from hypert5.data import sources
from hypert5.data import vocab as vocab_lib
from hypert5.data.errors import DataError, where
from hypert5.data.preprocessors import ANSWER_CHOICES

PREFIX = "bigbench"


def read_tasks(path: str) -> List[Tuple[str, str, Mapping]]:
  """[(task name, file, task object)] from a directory of task.json files or a JSONL."""
  if tf.io.gfile.isdir(path):
    out = []
    for directory, _, files in sorted(tf.io.gfile.walk(path)):
      if "task.json" not in files:
        continue
      file = os.path.join(directory, "task.json")
      obj = sources.read_json(file)
      if not isinstance(obj, Mapping):
        raise DataError(f"{where(file)}expected a JSON object (a BIG-bench task).")
      if "examples" not in obj and obj.get("subtasks"):
        continue  # a parent task; its subtasks have their own task.json
      name = os.path.relpath(directory, path).replace(os.sep, "/")
      out.append((name if name != "." else obj.get("name", "task"), file, obj))
    return out
  out = []
  for i, obj in enumerate(sources.read_jsonl(path)):
    name = obj.get("task_path") or obj.get("name") if isinstance(obj, Mapping) else None
    if not isinstance(name, str):
      raise DataError(f"{where(path, field='name')}line {i + 1}: a task object needs a "
                      "string `name` (or `task_path`).")
    out.append((name, path, obj))
  return out


def parse_task(name: str, file: str, obj: Mapping, k: int) -> Dict:
  """The task's kind and its examples as (input, targets, choices) rows, validated."""
  examples = sources.require(obj, "examples", file, name, types=list)
  multiple_choice = bool(examples) and all(
      isinstance(e, Mapping) and "target_scores" in e for e in examples)
  prefix = obj.get("task_prefix") or ""
  choice_prefix = obj.get("choice_prefix", "\n  choice: ")
  append_choices = bool(obj.get("append_choices_to_input", True))
  rows = []
  for i, ex in enumerate(examples):
    what = f"examples[{i}]"
    inp = sources.require(ex, "input", file, name, what, types=str).strip()
    if multiple_choice:
      scores = sources.require(ex, "target_scores", file, name, what, types=dict)
      if not scores:
        raise DataError(f"{where(file, name, 'target_scores')}{what}: no choices.")
      choices = [str(c).strip() for c in scores]
      best = max(scores.values())
      correct = [int(scores[c] == best) for c in scores]
      if append_choices:
        inp += "".join(choice_prefix + c for c in choices)
      rows.append({"inputs": inp, "targets": choices[correct.index(1)],
                   ANSWER_CHOICES: choices, "choice_is_correct": correct})
    else:
      if not isinstance(ex, Mapping) or "target" not in ex:
        raise DataError(f"{where(file, name, 'target')}{what}: missing (and not every "
                        "example has target_scores). Each example needs one or the other.")
      refs = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
      refs = [str(r).strip() for r in refs]
      if not refs:
        raise DataError(f"{where(file, name, 'target')}{what}: an empty list of targets.")
      rows.append({"inputs": inp, "targets": refs[0], "references": refs})
  distinct = {fewshot.content_key(r["inputs"]) for r in rows}
  if len(distinct) < k + 1:
    raise DataError(f"{where(file, name, 'examples')}{len(distinct)} distinct examples; "
                    f"{k}-shot needs at least {k + 1}. Lower k or leave the task out.")
  return {"multiple_choice": multiple_choice, "prefix": prefix, "rows": rows,
          "description": obj.get("description") or ""}


def _rows(task: Dict, name: str, k: int, seed: int, max_examples, split: str):
  rows = [dict(r, task_name=name, hyper_prefix=task["prefix"],
               description=task["description"]) for r in task["rows"]]
  if split == "train":
    rows = [{key: r[key] for key in ("task_name", "inputs", "targets", "hyper_prefix",
                                     "description")} for r in rows]
    return rows[:max_examples]
  support = fewshot.select_support([(r["inputs"], r["targets"]) for r in rows], k, seed,
                                   name) if k else ()
  rows = fewshot.without_support([(r["inputs"], r) for r in rows], support)
  rows = [dict(r, **{fewshot.SUPPORT_INPUTS: [s[0] for s in support],
                     fewshot.SUPPORT_TARGETS: [s[1] for s in support]}) for _, r in rows]
  if not support:
    rows = [{key: v for key, v in r.items()
             if key not in (fewshot.SUPPORT_INPUTS, fewshot.SUPPORT_TARGETS)} for r in rows]
  return rows[:max_examples]


def _top(name: str) -> str:
  return name.split("/")[0]


def _is_heldout(name: str, seed: int, fraction: float) -> bool:
  """The seeded fraction split, decided per top-level task (subtasks go together)."""
  digest = hashlib.sha256(f"{seed}\x00{_top(name)}".encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def _related(name: str, heldout: Sequence[str]) -> bool:
  """Whether training task `name` shares a top-level task with a held-out one, or one name
  extends the other (a translation: `entailed_polarity_hindi` of `entailed_polarity`)."""
  top = _top(name)
  return any(top == h or top.startswith(h + "_") or h.startswith(top + "_")
             for h in map(_top, heldout))


def register(path: str, k: int = 3, vocabulary=vocab_lib.DEFAULT_SPM_PATH,
             modes: Sequence[str] = ("hyper",), heldout: Optional[Sequence[str]] = None,
             heldout_fraction: float = 0.2, tasks: Optional[Sequence[str]] = None,
             max_examples: Optional[int] = None, seed: int = 0, pool_size: int = 1024,
             skip_invalid: bool = False, max_train_tasks: Optional[int] = None,
             queries_per_task: int = 1) -> Dict[str, List[str]]:
  """Registers BIG-bench JSON tasks and the bigbench_train / bigbench_heldout mixtures.

  `tasks` restricts which task names load; `heldout` lists the held-out names (else a
  seeded `heldout_fraction`). Task files are parsed here (the kind decides the metrics);
  `skip_invalid=True` logs and skips tasks that fail validation (e.g. fewer than K+1
  examples) instead of raising. `max_train_tasks` keeps a seeded subset of that many
  training tasks (held-out tasks are unaffected): building a seqio mixture of ~1,000 tasks
  takes about a second a task on a loaded CPU, too slow for small runs.
  `queries_per_task` > 1 makes each row of a training task Q of its queries sharing one
  support set and hypermodel forward (`fewshot.group_queries`); held-out tasks keep one.
  Returns {"train": [...], "heldout": [...]} hyper names.
  """
  fewshot.check_k(k)
  vocabulary = vocab_lib.as_vocabulary(vocabulary)
  wanted = None if tasks is None else set(tasks)
  heldout_set = None if heldout is None else set(heldout)
  chosen = {"train": [], "heldout": []}
  is_heldout = lambda name: (name in heldout_set if heldout_set is not None
                             else _is_heldout(name, seed, heldout_fraction))
  all_tasks = [t for t in read_tasks(path) if wanted is None or t[0] in wanted]
  heldout_names = [name for name, _, _ in all_tasks if is_heldout(name)]
  related = {name for name, _, _ in all_tasks
             if not is_heldout(name) and _related(name, heldout_names)}
  if related:
    logging.info("BIG-bench: %d tasks related to held-out ones left out of training: %s",
                 len(related), sorted(related)[:10])
  all_tasks = [t for t in all_tasks if t[0] not in related]
  kept_train = None
  if max_train_tasks is not None:
    train_names = [name for name, _, _ in all_tasks if not is_heldout(name)]
    rank = lambda name: hashlib.sha256(f"{seed}\x01{name}".encode()).digest()
    kept_train = set(sorted(train_names, key=rank)[:max_train_tasks])
  for name, file, obj in all_tasks:
    if kept_train is not None and not is_heldout(name) and name not in kept_train:
      continue
    try:
      task = parse_task(name, file, obj, k)
    except DataError as e:
      if not skip_invalid:
        raise
      logging.warning("Skipping BIG-bench task: %s", e)
      continue
    short = registry.sanitize(name.replace("/", "."))
    task_name = pipelines.task_name(PREFIX, "hyper", short)
    load = (lambda split, task=task, name=name:
            _rows(task, name, k, seed, max_examples, split))
    source = sources.RowsSource(load, ("train", "validation", "test"), task=task_name)
    names = pipelines.register(
        PREFIX, short, source,
        kind=pipelines.RANK if task["multiple_choice"] else pipelines.GENERATIVE,
        vocabulary=vocabulary, k=k, modes=modes, pool_size=pool_size, source_desc=file,
        queries_per_task=1 if is_heldout(name) else queries_per_task)
    chosen["heldout" if is_heldout(name) else "train"].append(names)
  if wanted is not None and heldout_set is not None and not heldout_set <= wanted:
    raise DataError(f"{where(path)}held-out tasks not among `tasks`: "
                    f"{sorted(heldout_set - wanted)[:5]}.")
  for split, names in chosen.items():
    pipelines.register_mixtures(PREFIX, split, names, modes)
  return {split: [n["hyper"] for n in names] for split, names in chosen.items()
          if "hyper" in modes}


registry.gin_configurable(register, "tasks.bigbench")
