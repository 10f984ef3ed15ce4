"""Choosing one fixed K-shot set per task: pure Python, the same on every host and run.

Kept free of TensorFlow so that any process (a launcher, a test's second "host") can
recompute a task's support set cheaply.
"""
import hashlib
from typing import Sequence, Tuple

from hypert5.data.errors import DataError, where

MAX_K = 49


def content_key(text) -> str:
  """Identity of an example for "never the query itself": its input text, stripped."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return text.strip()


def select_support(examples: Sequence[Tuple[str, str]], k: int, seed: int,
                   task: str) -> Tuple[Tuple[str, str], ...]:
  """One deterministic K-shot set: the K distinct inputs with the smallest seeded hash.

  Depends only on the set of examples, the seed and the task name: not on their order, the
  host, or the process (no Python `hash`), so every host and every run picks the same set.
  """
  if not 0 <= k <= MAX_K:
    raise ValueError(f"{where(task=task)}k={k}: few-shot k must be in [0, {MAX_K}].")
  by_key = {}
  for inp, tgt in examples:
    by_key.setdefault(content_key(inp), (inp, tgt))
  if len(by_key) < k + 1:
    raise DataError(
        f"{where(task=task)}only {len(by_key)} distinct examples; a fixed {k}-shot set "
        f"needs at least {k + 1} (k support examples and a query). Lower k or add examples.")

  def rank(key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{task}\x00{key}".encode()).digest()

  return tuple(by_key[key] for key in sorted(by_key, key=rank)[:k])


def without_support(examples: Sequence[Tuple], support: Sequence[Tuple[str, str]]):
  """Drops queries whose input equals a support input (the query never sees itself)."""
  keys = {content_key(inp) for inp, _ in support}
  return [ex for ex in examples if content_key(ex[0]) not in keys]
