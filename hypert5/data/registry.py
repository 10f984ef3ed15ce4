"""Idempotent seqio registration: registering a name again replaces it.

Task modules are imported by gin, by tests and by users, sometimes twice, and register
functions are called again with new paths or settings; seqio's own `add` refuses
duplicates. Mixtures are re-created after their tasks so they hold the current tasks.
"""
import logging
from typing import Dict, Sequence, Tuple, Union

import seqio

Rate = Union[float, int]

# Task name -> queries per row (fewshot.group_queries); tasks not listed have one.
_QUERIES_PER_TASK: Dict[str, int] = {}


def add_task(name: str, queries_per_task: int = 1, **kwargs) -> seqio.Task:
  """`seqio.TaskRegistry.add(name, ...)`, replacing a task of the same name.

  `queries_per_task` records how many queries of one task each row holds (its
  preprocessors group them: `fewshot.group_queries`), read back by `queries_per_task`.
  """
  if name in seqio.TaskRegistry.names():
    logging.debug("Replacing seqio task %s", name)
    seqio.TaskRegistry.remove(name)
  _QUERIES_PER_TASK.pop(name, None)
  if queries_per_task != 1:
    _QUERIES_PER_TASK[name] = queries_per_task
  return seqio.TaskRegistry.add(name, **kwargs)


def provider_of(task_or_mixture) -> seqio.DatasetProviderBase:
  """A registered task or mixture, by name or as itself."""
  if isinstance(task_or_mixture, str):
    return seqio.get_mixture_or_task(task_or_mixture)
  return task_or_mixture


def queries_per_task(task_or_mixture) -> int:
  """Queries per row of a registered task, or of every task of a mixture (they must agree:
  one batch has one shape)."""
  provider = provider_of(task_or_mixture)
  subtasks = seqio.get_subtasks(provider)
  for t in subtasks:
    feature = t.output_features.get("inputs")
    if feature is not None and feature.rank == 2 and t.name not in _QUERIES_PER_TASK:
      raise ValueError(f"task {t.name}: its inputs hold several queries per row, but how many "
                       "is not recorded; register it with hypert5.data.registry.add_task(..., "
                       "queries_per_task=Q) or pipelines.register.")
  counts = {t.name: _QUERIES_PER_TASK.get(t.name, 1) for t in subtasks}
  if len(set(counts.values())) > 1:
    raise ValueError(f"{provider.name}: its tasks group different numbers of queries per row "
                     f"({counts}); register them with one queries_per_task.")
  return next(iter(counts.values()), 1)


def trims_output_features(task_or_mixture) -> bool:
  """What to pass seqio's `trim_output_features`: seqio's trim cuts a feature's first axis,
  which rows of several queries hold [Q, length] in, so their preprocessors trim each
  query themselves and seqio must not."""
  return queries_per_task(task_or_mixture) == 1


def add_mixture(name: str, tasks: Sequence[Union[str, Tuple[str, Rate]]],
                default_rate: Rate = 1.0) -> seqio.Mixture:
  """`seqio.MixtureRegistry.add`, replacing a mixture of the same name."""
  if not tasks:
    raise ValueError(f"mixture {name}: no tasks. Check the data path and the task lists.")
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)


def sanitize(name: str) -> str:
  """A seqio-legal task-name fragment: letters, digits, `_`, `.`, `:`; others become `_`."""
  return "".join(c if c.isalnum() or c in "_.:" else "_" for c in name)


def gin_configurable(fn, module: str):
  """Makes a register function callable from gin as `@<module>.<name>()`; returns `fn`.

  The function itself stays plain Python (gin binds at the edge). Re-importing a module
  (e.g. `importlib.reload`) keeps the first registration instead of failing.
  """
  import gin  # pylint: disable=g-import-not-at-top
  try:
    gin.external_configurable(fn, name=fn.__name__, module=module)
  except ValueError:  # already registered by an earlier import of the module
    pass
  return fn
