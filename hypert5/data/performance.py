"""tf.data options and per-task shuffle buffers for the input pipeline.

seqio builds a chain of small per-example maps (tokenize, few-shot layout, trimming,
conversion); tf.data pays a fixed cost per map call, so fusing them roughly doubles
throughput on a few CPU cores (see `hypert5.data.throughput`). Apply to the final dataset:
`ds = ds.with_options(tf_data_options())`.

A mixture shuffles each of its tasks separately, in a buffer of the task's
`shuffle_buffer_size` (seqio's default: 1,000 examples), filled when the mixture first
draws from the task and held for the whole run. Over hundreds of tasks (S-NI, P3) that is
minutes of warm-up and gigabytes per host; `shuffle_buffers` sets one size for all of them.

`numpy_batches` reads a dataset and, when the reader stops, deletes tf.data's iterator on a
thread of its own: that deletion can wait tens of seconds (below).
"""
import contextlib
import threading
from typing import Any, Iterator, Optional

import seqio
import tensorflow as tf


def tf_data_options(cores: Optional[int] = None) -> tf.data.Options:
  """Map fusion and parallelization on; `cores` caps tf.data's private thread pool."""
  options = tf.data.Options()
  options.experimental_optimization.map_fusion = True
  options.experimental_optimization.map_parallelization = True
  if cores:
    options.threading.private_threadpool_size = cores
  return options


@contextlib.contextmanager
def shuffle_buffers(provider: seqio.DatasetProviderBase, size: Optional[int]) -> Iterator[None]:
  """While datasets are built inside, every task of `provider` (a task or a mixture, nested
  ones included) shuffles in a buffer of `size` examples; None keeps each task's own.

  seqio's `Mixture.get_dataset` does not pass a buffer size down to its tasks, so this sets
  the size each task reads when it builds its pipeline (seqio 0.0.20's
  `Task._shuffle_buffer_size`) and restores it on exit; datasets already built keep theirs.
  """
  if size is None:
    yield
    return
  if size < 1:
    raise ValueError(f"shuffle buffer size {size}: expected a positive number of examples "
                     "(or None for each task's own).")
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  saved = {task: task._shuffle_buffer_size for task in tasks}  # pylint: disable=protected-access
  try:
    for task in tasks:
      if saved[task] is not None:  # None: the task's source shuffles itself
        task._shuffle_buffer_size = size  # pylint: disable=protected-access
    yield
  finally:
    for task, own in saved.items():
      task._shuffle_buffer_size = own  # pylint: disable=protected-access


def numpy_batches(ds: tf.data.Dataset) -> Iterator[Any]:
  """`ds.as_numpy_iterator()`, except that closing this generator (or dropping it) hands
  the tf.data iterator to a background thread, whose deletion of it may take a while.

  Why: deleting an iterator joins tf.data's autotuning thread, which at times finishes a
  timed sleep first; the sleep grows over a run. At the end of the demo's training stages
  the main thread waited 17-50 s there (a faulthandler dump showed it at this generator's
  exit) before the stage's evaluation could start. The thread is not a daemon, so the
  interpreter still waits for it at exit rather than abandoning it inside TensorFlow. An
  exception from the dataset keeps the iterator in its traceback, and an interpreter that
  is shutting down starts no thread: the iterator is then deleted where it is dropped.
  """
  iterator = ds.as_numpy_iterator()
  try:
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      yield batch
  finally:
    holder = [iterator]
    del iterator  # the thread's pop takes the last reference, so the deletion runs there
    try:
      threading.Thread(target=holder.pop, name="tf.data iterator release").start()
    except Exception:  # pylint: disable=broad-except  # e.g. at interpreter shutdown
      holder.clear()
