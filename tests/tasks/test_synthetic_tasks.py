"""The synthetic family: seeded, file-free, held-out members disjoint from training ones."""
import importlib

import numpy as np
import pytest
import seqio

import task_fixtures as fx
import tasks
from hypert5.data import converters, get_vocabulary, registry
from tasks import synthetic

BYTES = get_vocabulary("byte")


def test_members_follow_the_seed_and_splits_are_disjoint():
  a, b = synthetic.Family(seed=7, num_train=300, num_heldout=20), synthetic.Family(
      seed=7, num_train=300, num_heldout=20)
  assert a.members == b.members
  assert synthetic.Family(seed=8, num_train=300, num_heldout=20).members != a.members
  assert len(set(a.members)) == 320
  assert not set(a.train_members) & set(a.heldout_members)
  assert len({m.name for m in a.members}) == 320  # names identify members


def test_default_family_has_thousands_of_members():
  family = synthetic.FAMILY
  assert len(family.train_members) == 4096 and len(family.heldout_members) == 64
  assert family.k == 6


def test_member_semantics_and_description():
  member = synthetic.Member(reverse=True, subs=(("a", "d"), ("c", "k"), ("f", "b")))
  assert member.name == "rev_ad_ck_fb"
  assert member("abcf") == "bkbd"  # reversed to "fcba", then f->b, c->k, a->d
  assert member.description == "reverse: a>d c>k f>b"
  assert synthetic.Member(False, (("a", "b"), ("b", "a")))("ab") == "ba"  # simultaneous


def test_tf_training_rows_match_the_members():
  family = synthetic.Family(seed=3, num_train=50, num_heldout=5)
  by_name = {m.name: m for m in family.train_members}
  rows = list(family.train_dataset("train", 300).as_numpy_iterator())
  again = list(family.train_dataset("train", 300).as_numpy_iterator())
  assert len(rows) == 300 and all(
      r["inputs"] == g["inputs"] and r["task_name"] == g["task_name"] for r, g in zip(rows, again))
  for r in rows:
    member = by_name[r["task_name"].decode()]
    assert member(r["inputs"].decode()) == r["targets"].decode()
    xs = [x.decode() for x in r["support_inputs"]]
    assert [member(x) for x in xs] == [y.decode() for y in r["support_targets"]]
    assert r["inputs"].decode() not in xs and len(set(xs)) == family.k
    assert family.min_len <= len(r["inputs"]) <= family.max_len
  assert len({r["task_name"] for r in rows}) > 40  # many members in a short stretch


def test_training_rows_of_several_queries_share_their_members_examples():
  family = synthetic.Family(seed=3, num_train=50, num_heldout=5, queries_per_task=3)
  by_name = {m.name: m for m in family.train_members}
  for r in family.train_dataset("train", 100).as_numpy_iterator():
    member = by_name[r["task_name"].decode()]
    queries = [x.decode() for x in r["inputs"]]
    assert [member(x) for x in queries] == [y.decode() for y in r["targets"]]
    support = [x.decode() for x in r["support_inputs"]]
    assert len(set(queries + support)) == 3 + family.k  # no query among the examples

  # Registered: the converter's batches hold [Q, length] queries under one hyper input.
  lengths = family.sequence_lengths("hyper")
  synthetic.register(seed=3, num_train=50, num_heldout=5, modes=("hyper",),
                     queries_per_task=3, train_examples=64)
  try:
    assert registry.queries_per_task("synthetic_train_q3") == 3
    assert registry.queries_per_task("synthetic_train") == 1  # its name unchanged
    assert registry.queries_per_task("synthetic_heldout") == 1
    converter = converters.converter_for("synthetic_train_q3")
    batch = next(seqio.get_dataset("synthetic_train_q3", lengths, converter, "train",
                                   shuffle=False,
                                   batch_size=8, trim_output_features=False).as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (8, 3, lengths["inputs"])
    text = lambda ids: bytes(int(i) - 3 for i in ids if 2 < i < 259).decode()
    for hyper, queries, targets in zip(batch["hyper_encoder_input_tokens"],
                                       batch["encoder_input_tokens"],
                                       batch["decoder_target_tokens"]):
      # Sentinels (ids above the bytes) open each example's input and output.
      parts = [text(p) for p in np.split(hyper, np.flatnonzero(hyper > 258))[1:]]
      pairs = list(zip(parts[0::2], parts[1::2]))
      rows = list(zip(map(text, queries), map(text, targets)))
      assert len(pairs) == family.k and not {x for x, _ in pairs} & {x for x, _ in rows}
      # One training member maps the examples and the row's queries alike.
      assert any(all(m(x) == y for x, y in pairs + rows) for m in by_name.values())
  finally:
    synthetic.register()  # back to the default for other tests in this process


def test_heldout_tasks_have_one_fixed_support_and_disjoint_queries():
  family = synthetic.FAMILY
  member = family.heldout_members[0]
  support = family.support(member)
  assert support == synthetic.Family().support(member)  # same on every host and run
  splits = {s: family.queries(member, s) for s in ("train", "validation", "test")}
  inputs = [x for s in splits.values() for x, _ in s] + [x for x, _ in support]
  assert len(inputs) == len(set(inputs))

  lengths = family.sequence_lengths("hyper")
  rows = fx.examples(synthetic.heldout_task_name(0), lengths, "test")
  assert len(rows) == 64 and len({tuple(r["hyper_inputs"]) for r in rows}) == 1
  assert all(r["fewshot_kept"] == 6 and r["hyper_inputs_truncated"] == 0 for r in rows)
  text = BYTES.decode(rows[0]["hyper_inputs"].tolist())
  assert text == "".join(x + y for x, y in support)  # sentinels decode to nothing
  fx.batch(synthetic.heldout_task_name(1), lengths, "validation")


@pytest.mark.parametrize("mode", ["hyper", "icl", "oracle", "plain"])
def test_every_mode_gives_batches_that_fit(mode):
  lengths = synthetic.FAMILY.sequence_lengths(mode)
  name = synthetic.pipelines.task_name("synthetic", mode, "train")
  out = fx.batch(name, lengths, "train", size=16)
  assert (out["encoder_input_tokens"][:, -1] == 0).any()  # the lengths leave room
  rows = fx.examples(name, lengths, "train", n=64)
  for ex in rows:
    assert sum(v for k, v in ex.items() if k.endswith("_truncated")) == 0
  if mode == "oracle":
    ex = rows[0]
    assert BYTES.decode(ex["inputs"].tolist()).startswith(ex["description"].decode())


def test_registration_is_idempotent():
  importlib.reload(tasks)
  importlib.reload(synthetic)
  family = synthetic.register(seed=5, num_train=64, num_heldout=4, modes=("hyper",))
  assert synthetic.FAMILY is family
  assert [t.name for t in seqio.get_mixture_or_task("synthetic_heldout").tasks] == [
      synthetic.heldout_task_name(i) for i in range(4)]
  ex = fx.examples("synthetic_heldout_000", family.sequence_lengths(), "test", n=1)[0]
  assert ex["task_name"].decode() == family.heldout_members[0].name
  synthetic.register()  # back to the default for other tests in this process
  assert synthetic.FAMILY == synthetic.Family()
