"""Output features of the two task shapes: hyper (few-shot text + query) and plain (query)."""
from typing import Mapping

import seqio

from hypert5.data import vocab as vocab_lib
from hypert5.data.names import HYPER_INPUTS


def plain_features(vocabulary) -> Mapping[str, seqio.Feature]:
  """`inputs` / `targets`, for the T5-MTF baselines and plain encoder-decoder training."""
  v = vocab_lib.as_vocabulary(vocabulary)
  return {
      "inputs": seqio.Feature(v, add_eos=True, required=True),
      "targets": seqio.Feature(v, add_eos=True, required=True),
  }


def hyper_features(vocabulary, queries_per_task: int = 1) -> Mapping[str, seqio.Feature]:
  """`hyper_inputs` (what the hypermodel reads) plus the plain features; with several
  queries per row (`fewshot.group_queries`) `inputs` / `targets` are [queries, length]."""
  v = vocab_lib.as_vocabulary(vocabulary)
  plain = plain_features(v)
  if queries_per_task > 1:
    plain = {k: seqio.Feature(v, add_eos=True, required=True, rank=2) for k in plain}
  return {HYPER_INPUTS: seqio.Feature(v, add_eos=True, required=True), **plain}
