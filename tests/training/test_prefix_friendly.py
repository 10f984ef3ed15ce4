"""Training mode prefix_friendly: the oracle split, the two-halves loss, and the head
hand-over to HyperT5-Prefix (experiment.init_head_from)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  registers the synthetic tasks
from hypert5 import runs
from hypert5.data import fewshot
from hypert5.data.errors import DataError
from hypert5.models import configs, hypermodel, t5
from hypert5.training import losses, modes, peft_io

CFG = configs.get_config("tiny")
HYPER = hypermodel.HyperT5Config(t5=CFG, peft_type="prefix", prefix_length=64, head_hidden=32)


def _oracle_rows(n):
  task = seqio.get_mixture_or_task("synthetic_oracle_train")
  ds = task.get_dataset({"inputs": 75, "targets": 11}, split="train", shuffle=False)
  rows = list(ds.take(n).as_numpy_iterator())
  vocab = task.output_features["inputs"].vocabulary
  pad = lambda key, n: np.stack([np.pad(r[key], (0, n - len(r[key]))) for r in rows])
  return rows, vocab, pad("inputs", 75), pad("targets", 11)


def test_split_oracle_recovers_description_and_query():
  rows, vocab, inputs, _ = _oracle_rows(4)
  desc, query = fewshot.split_oracle(inputs, vocab.vocab_size, 64, 11)
  for row, d, q in zip(rows, desc, query):
    assert vocab.decode([t for t in d if t]) == row["description"].decode()
    assert vocab.decode([t for t in q if t > 1]) == row["inputs_pretokenized"].decode()
    assert list(q).count(1) == 1  # the query ends in EOS, as plain / hyper inputs do
  with pytest.raises(DataError, match="oracle row 0"):
    fewshot.split_oracle(query, vocab.vocab_size, 64, 11)  # bare queries have no markers


def test_loss_is_text_half_plus_prefix_half():
  _, vocab, inputs, targets = _oracle_rows(4)
  desc, query = fewshot.split_oracle(inputs, vocab.vocab_size, 64, 11)
  dec = np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], 1)
  batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": dec,
           "decoder_target_tokens": targets, "description_tokens": desc, "query_tokens": query}
  obj = modes.Objective("prefix_friendly", CFG, HYPER)
  downstream = t5.init_params(CFG, jax.random.key(0))
  trainable, frozen = obj.init(jax.random.key(1), downstream)
  assert frozen == {} and obj.trains_downstream
  assert obj.downstream(trainable, frozen) is downstream
  total, count = obj.loss(trainable, frozen, batch)

  model = t5.T5(CFG)
  text = model.apply({"params": downstream}, inputs[:2], dec[:2])
  emb = jnp.take(downstream["token_embedder"]["embedding"], desc[2:], axis=0)
  prefix = hypermodel.PrefixHead(HYPER).apply({"params": trainable["reparam"]}, emb)
  as_prefix = model.apply({"params": downstream}, query[2:], dec[2:], prefix)
  l1, w1 = losses.cross_entropy(text, targets[:2])
  l2, w2 = losses.cross_entropy(as_prefix, targets[2:])
  np.testing.assert_allclose(total, l1 + l2, rtol=1e-5)
  assert count == w1 + w2
  # Both halves train the T5 and the head gets gradients only through the prefix half.
  grads = jax.grad(lambda p: obj.loss(p, frozen, batch)[0])(trainable)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["reparam"]))
  assert float(jnp.abs(grads["t5"]["token_embedder"]["embedding"]).max()) > 0


def test_init_head_from_copies_the_reparam_head(tmp_path):
  obj = modes.Objective("prefix_friendly", CFG, HYPER)
  trainable, _ = obj.init(jax.random.key(1), t5.init_params(CFG, jax.random.key(0)))
  peft_io.save_tree_safetensors(jax.device_get(trainable["reparam"]),
                                str(tmp_path / runs.REPARAM_FILE))
  hyper = hypermodel.init_hyper_params(HYPER, jax.random.key(2))
  started = runs.init_head_from(hyper, str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, started["head"], trainable["reparam"])
  assert started["queries"] is hyper["queries"]
  with pytest.raises(runs.UsageError, match="does not match"):
    runs.init_head_from(hypermodel.init_hyper_params(HYPER.replace(head_hidden=16),
                                                     jax.random.key(2)), str(tmp_path))
  with pytest.raises(runs.UsageError, match="not found"):
    runs.init_head_from(hyper, str(tmp_path / "missing"))
