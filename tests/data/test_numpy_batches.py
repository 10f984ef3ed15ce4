"""`performance.numpy_batches`: tf.data as numpy, with the iterator deleted off the reader's thread."""
import threading
import time

import numpy as np
import tensorflow as tf

from hypert5.data import performance


def test_yields_what_as_numpy_iterator_yields():
  ds = tf.data.Dataset.range(5).map(lambda i: {"x": tf.fill([2], i)})
  got = list(performance.numpy_batches(ds))
  want = list(ds.as_numpy_iterator())
  assert len(got) == len(want) == 5
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["x"], w["x"])


class _SlowToDelete:
  """An iterator whose deletion blocks, as tf.data's can while it joins its autotuner."""

  def __init__(self, deleted_on: list):
    self.deleted_on = deleted_on

  def __next__(self):
    return 1

  def __del__(self):
    time.sleep(1.0)
    self.deleted_on.append(threading.current_thread().name)


class _Dataset:
  def __init__(self, deleted_on: list):
    self.deleted_on = deleted_on

  def as_numpy_iterator(self):
    return _SlowToDelete(self.deleted_on)


def test_closing_does_not_wait_for_the_iterator_to_be_deleted():
  deleted_on: list = []
  batches = performance.numpy_batches(_Dataset(deleted_on))
  assert next(batches) == 1
  start = time.perf_counter()
  batches.close()
  assert time.perf_counter() - start < 0.5  # the 1 s deletion runs elsewhere
  release = [t for t in threading.enumerate() if t.name == "tf.data iterator release"]
  assert release and not release[0].daemon  # the interpreter waits for it at exit
  for thread in release:
    thread.join()
  assert deleted_on == ["tf.data iterator release"]


def test_deletes_in_place_when_no_thread_can_start(monkeypatch):
  # At interpreter shutdown threading refuses new threads; closing must still work.
  def refuse(*args, **kwargs):
    raise RuntimeError("can't create new thread at interpreter shutdown")
  monkeypatch.setattr(performance.threading, "Thread", refuse)
  deleted_on: list = []
  batches = performance.numpy_batches(_Dataset(deleted_on))
  next(batches)
  batches.close()
  assert deleted_on == [threading.current_thread().name]
