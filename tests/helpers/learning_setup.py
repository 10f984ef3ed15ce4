"""A token-level task family for learning tests: each task is (reverse or not) followed by a
3-letter cyclic substitution over 12 letters, visible only through K examples."""
import itertools

import numpy as np

LETTERS = np.arange(10, 22)  # 12 letter tokens
SEP, EOS = 3, 1
INDEX_BASE = 30              # example-index markers 30, 31, ...
LENGTH = 6


def all_tasks():
  tasks = []
  for trio in itertools.combinations(range(12), 3):
    for order in (trio[1:] + trio[:1], trio[2:] + trio[:2]):
      for reverse in (False, True):
        perm = np.arange(12)
        perm[list(trio)] = order
        tasks.append((reverse, perm))
  return tasks


def split_tasks(seed=0, held_out=64):
  tasks = all_tasks()
  order = np.random.default_rng(seed).permutation(len(tasks))
  return [tasks[i] for i in order[held_out:]], [tasks[i] for i in order[:held_out]]


def apply_task(task, x):
  reverse, perm = task
  y = x[::-1] if reverse else x
  return LETTERS[perm[y - LETTERS[0]]]


def make_batch(tasks, batch_size, k, rng):
  hyper, enc, tgt = [], [], []
  for _ in range(batch_size):
    task = tasks[rng.integers(len(tasks))]
    xs = rng.choice(LETTERS, size=(k + 1, LENGTH))
    h = []
    for i, x in enumerate(xs[:k]):
      h += [INDEX_BASE + i, *x, SEP, *apply_task(task, x)]
    hyper.append(h + [EOS])
    enc.append(list(xs[k]) + [EOS])
    tgt.append(list(apply_task(task, xs[k])) + [EOS])
  tgt = np.array(tgt, np.int32)
  return {
      "hyper_encoder_input_tokens": np.array(hyper, np.int32),
      "encoder_input_tokens": np.array(enc, np.int32),
      "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": np.ones_like(tgt, np.float32),
  }
