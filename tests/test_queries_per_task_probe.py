"""benchmarks/queries_per_task_probe.py: its objective and batches, on a tiny random setup.

Sharing one hypermodel forward among a task's Q queries must give the same loss as the
ordinary hyper objective on the same rows with the hyper input written out per query; the
probe's batches must be the family's: every query's target is its task's mapping of the
query, the Q queries of a task are not among its examples, and the layout is the pipeline's.
"""
import jax
import numpy as np

from hypert5.models import configs, hypermodel, t5
from hypert5.training import modes
from scripts import load_script

probe = load_script("benchmarks/queries_per_task_probe.py")


def test_a_shared_forward_gives_the_loss_of_duplicated_hyper_rows():
  cfg = configs.get_config("tiny", vocab_size=359)
  hyper = hypermodel.HyperT5Config(t5=cfg, peft_type="lora", head_hidden=32)
  downstream = t5.init_params(cfg, jax.random.key(0))
  shared = probe._objective_class()("hyper", cfg, hyper)
  plain = modes.Objective("hyper", cfg, hyper)
  trainable, frozen = plain.init(jax.random.key(1), downstream)
  # B (the LoRA head's second output) starts at zero; move it so the LoRA matters.
  trainable = jax.tree.map(lambda x: x + 0.05, trainable)
  batch = next(iter(probe.Batches(tasks=3, queries=4, hyper_len=133, query_len=11, seed=0)))
  assert batch["hyper_encoder_input_tokens"].shape == (3, 133)
  assert batch["encoder_input_tokens"].shape == (12, 11)
  written_out = dict(batch, hyper_encoder_input_tokens=np.repeat(
      batch["hyper_encoder_input_tokens"], 4, axis=0))
  loss_shared, n_shared = shared.loss(trainable, frozen, batch)
  loss_plain, n_plain = plain.loss(trainable, frozen, written_out)
  np.testing.assert_allclose(loss_shared, loss_plain, rtol=1e-6)
  assert n_shared == n_plain
  other = dict(written_out, hyper_encoder_input_tokens=written_out[
      "hyper_encoder_input_tokens"][::-1])  # queries paired with other tasks' examples
  assert abs(float(plain.loss(trainable, frozen, other)[0]) - float(loss_plain)) > 1e-3


def test_batches_follow_the_family():
  from tasks import synthetic
  family = synthetic.FAMILY
  q = 3
  batches = probe.Batches(tasks=4, queries=q, hyper_len=133, query_len=11, seed=1)
  batch = next(iter(batches))
  text = lambda ids: bytes(int(i) - 3 for i in ids if i > 2).decode()
  train = {m.name: m for m in family.train_members}
  for t, hyper in enumerate(batch["hyper_encoder_input_tokens"]):
    # Parse the examples back: sentinels mark each input (359 - 1 - 2i) and output.
    marks = np.flatnonzero(hyper > 258)
    parts = np.split(hyper, marks)[1:]
    pairs = [(text(parts[2 * i][1:]), text(parts[2 * i + 1][1:])) for i in range(family.k)]
    members = [m for m in train.values() if all(m(x) == y for x, y in pairs)]
    assert members, pairs  # the examples come from a training member
    for row in range(t * q, (t + 1) * q):
      x, y = text(batch["encoder_input_tokens"][row]), text(batch["decoder_target_tokens"][row])
      assert 5 <= len(x) <= 10 and x not in dict(pairs)
      assert any(m(x) == y for m in members)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                  batch["decoder_target_tokens"][:, :-1])
