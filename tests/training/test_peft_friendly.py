"""Training mode peft_friendly: the oracle split, the text / prefix / LoRA loss, and the
readers' hand-over to HyperT5-Prefix and -LoRA (experiment.init_head_from)."""
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


def _reader_params(kind, trainable, downstream):
  """A HyperT5 of `kind` with this T5 as body and the run's reader queries and head."""
  return {**hypermodel.body_of(downstream), **trainable["reparam"][kind]}


@pytest.mark.parametrize("text_fraction,bounds", [(0.5, (2, 3)), (0.25, (1, 2))])
def test_loss_is_text_share_plus_prefix_and_lora_shares(text_fraction, bounds):
  """Rows [0, t) read the description as text, [t, p) as a prefix, [p, 4) as a LoRA."""
  t, p = bounds
  _, vocab, inputs, targets = _oracle_rows(4)
  desc, query = fewshot.split_oracle(inputs, vocab.vocab_size, 64, 11)
  dec = np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], 1)
  batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": dec,
           "decoder_target_tokens": targets, "description_tokens": desc, "query_tokens": query}
  obj = modes.Objective("peft_friendly", CFG, HYPER, text_fraction=text_fraction)
  downstream = t5.init_params(CFG, jax.random.key(0))
  trainable, frozen = obj.init(jax.random.key(1), downstream)
  assert frozen == {} and obj.trains_downstream
  assert obj.downstream(trainable, frozen) is downstream
  # LoRA's B starts at zero (no gradient reaches the rest of its reader): start it elsewhere.
  lora_head = trainable["reparam"]["lora"]["head"]
  for name in lora_head:
    if name.endswith("_b"):
      lora_head[name]["kernel"] = 0.1 * jax.random.normal(jax.random.key(4),
                                                          lora_head[name]["kernel"].shape)
  # One compile for the loss and its gradients (checked below).
  (total, count), grads = jax.jit(jax.value_and_grad(
      lambda p: obj.loss(p, frozen, batch), has_aux=True))(trainable)

  model = t5.T5(CFG)
  text = model.apply({"params": downstream}, inputs[:t], dec[:t])
  # The other rows read the description as HyperT5-Prefix / -LoRA over it (body = this T5).
  prefix = hypermodel.HyperT5(HYPER).apply(
      {"params": _reader_params("prefix", trainable, downstream)}, desc[t:p])
  lora = hypermodel.HyperT5(HYPER.replace(peft_type="lora")).apply(
      {"params": _reader_params("lora", trainable, downstream)}, desc[p:])
  as_prefix = model.apply({"params": downstream}, query[t:p], dec[t:p], prefix)
  as_lora = model.apply({"params": downstream}, query[p:], dec[p:], lora)
  parts = [losses.cross_entropy(text, targets[:t]), losses.cross_entropy(as_prefix, targets[t:p]),
           losses.cross_entropy(as_lora, targets[p:])]
  np.testing.assert_allclose(total, sum(l for l, _ in parts), rtol=1e-5)
  assert count == sum(w for _, w in parts)
  # Every part trains the T5, and each reader gets gradients through its rows.
  for kind in modes.READERS:
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["reparam"][kind])), kind
  assert float(jnp.abs(grads["t5"]["token_embedder"]["embedding"]).max()) > 0


def test_text_fraction_must_leave_rows_to_the_readers():
  with pytest.raises(ValueError, match="text_fraction=1.0"):
    modes.Objective("peft_friendly", CFG, HYPER, text_fraction=1.0)


def test_reparam_prefix_depends_on_the_description_order():
  """A per-token prefix is a bag (prefix positions get no position bias): swapping two
  description tokens would only permute its rows. The encoded description's must change."""
  _, vocab, inputs, _ = _oracle_rows(1)
  desc, _ = fewshot.split_oracle(inputs, vocab.vocab_size, 64, 11)
  swapped = desc.copy()
  swapped[:, [0, 2]] = desc[:, [2, 0]]
  assert (swapped != desc).any()
  obj = modes.Objective("peft_friendly", CFG, HYPER)
  trainable, _ = obj.init(jax.random.key(1), t5.init_params(CFG, jax.random.key(0)))
  keys = [np.asarray(obj.read_description(trainable, "prefix", d).keys["encoder_self"])
          for d in (desc, swapped)]
  assert not np.allclose(np.sort(keys[0].ravel()), np.sort(keys[1].ravel()), atol=1e-4)


def test_init_head_from_copies_the_readers_queries_and_head(tmp_path):
  obj = modes.Objective("peft_friendly", CFG, HYPER)
  trainable, _ = obj.init(jax.random.key(1), t5.init_params(CFG, jax.random.key(0)))
  assert set(trainable["reparam"]) == set(modes.READERS)
  peft_io.save_tree_safetensors(jax.device_get(trainable["reparam"]),
                                str(tmp_path / runs.REPARAM_FILE))
  for kind in modes.READERS:
    hyper = hypermodel.init_hyper_params(HYPER.replace(peft_type=kind), jax.random.key(2))
    started = runs.init_head_from(hyper, str(tmp_path), kind)
    assert set(trainable["reparam"][kind]) == set(modes.REPARAM_KEYS)
    for key in modes.REPARAM_KEYS:
      jax.tree.map(np.testing.assert_array_equal, started[key], trainable["reparam"][kind][key])
    assert started["encoder"] is hyper["encoder"]
  with pytest.raises(runs.UsageError, match="does not match"):
    runs.init_head_from(hypermodel.init_hyper_params(HYPER.replace(head_hidden=16),
                                                     jax.random.key(2)), str(tmp_path), "prefix")
  with pytest.raises(runs.UsageError, match="not found"):
    runs.init_head_from(hyper, str(tmp_path / "missing"), "lora")


def test_split_oracle_never_cuts_a_description():
  rows, vocab, inputs, _ = _oracle_rows(8)
  longest = max(len(r["description"]) for r in rows)  # bytes: one token per character
  desc, _ = fewshot.split_oracle(inputs, vocab.vocab_size, longest, 11)
  assert [vocab.decode([t for t in d if t]) for d in desc] == [
      r["description"].decode() for r in rows]
  with pytest.raises(DataError, match=f"{longest} tokens.*experiment.description_length"):
    fewshot.split_oracle(inputs, vocab.vocab_size, longest - 1, 11)


@pytest.mark.parametrize("description_length", [None, 24])
def test_peft_friendly_batches_hold_description_length_tokens(description_length):
  """The readers' description width is experiment.description_length (by default the
  inputs' length), not the prefix length it once was tied to: a 64-position prefix reader
  reads 24 description tokens, or 30 by default."""
  from hypert5 import main
  main.parse_gin(["experiments/demo_downstream.gin"], [
      "MODEL_DIR='/unused'", "hypert5.HyperT5Config.prefix_length=64",
      f"experiment.description_length={description_length}"])
  exp = runs.experiment()
  width = description_length or exp.task_feature_lengths["inputs"]
  assert exp.description_tokens == width
  assert runs.batch_shapes(exp)["description_tokens"] == (exp.batch_size, width)
  batch = next(runs.train_batches(exp))
  assert batch["description_tokens"].shape == (exp.batch_size, width)
  assert (batch["description_tokens"][:, 17:] == 0).all()  # "copy: a>d c>k f>b" fits whole
  assert (batch["description_tokens"][:, 16] != 0).all()
