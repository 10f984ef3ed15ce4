"""Idempotent seqio registration: registering a name again replaces it.

Task modules are imported by gin, by tests and by users, sometimes twice, and register
functions are called again with new paths or settings; seqio's own `add` refuses
duplicates. Mixtures are re-created after their tasks so they hold the current tasks.
"""
import logging
from typing import Sequence, Tuple, Union

import seqio

Rate = Union[float, int]


def add_task(name: str, **kwargs) -> seqio.Task:
  """`seqio.TaskRegistry.add(name, ...)`, replacing a task of the same name."""
  if name in seqio.TaskRegistry.names():
    logging.debug("Replacing seqio task %s", name)
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


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
