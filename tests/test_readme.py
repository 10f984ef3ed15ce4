"""README's examples stay true: the custom-task snippet runs and yields hyper batches."""
import os
import re

import seqio

from hypert5.data import converters

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _snippet(heading):
  text = open(README).read()
  section = text[text.index(heading):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_custom_task_snippet_registers_a_working_task():
  exec(_snippet("## Your own tasks"), {})
  task = seqio.get_mixture_or_task("my_upper")
  ds = seqio.get_dataset(task, {"hyper_inputs": 64, "inputs": 8, "targets": 8},
                         converters.HyperFeatureConverter(), dataset_split="train",
                         shuffle=False, batch_size=3)
  batch = next(ds.as_numpy_iterator())
  assert batch["hyper_encoder_input_tokens"].shape == (3, 64)
  assert (batch["decoder_target_tokens"][:, 0] > 0).all()
  seqio.TaskRegistry.remove("my_upper")
