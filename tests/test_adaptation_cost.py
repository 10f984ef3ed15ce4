"""benchmarks/adaptation_cost.py: its core functions on a tiny random setup (no demo run).

A random tiny downstream T5 and a random HyperT5-LoRA stand in for the demo's trained ones;
the task is random tokens. Checks the output structure, that FLOP and time fields are
positive, and the stop rule: a target equal to the step-0 score is reached at step 0 (no
time, no FLOPs), an unreachable one runs to the step cap and is reported as not reached.
Speed itself is the benchmark's business, not asserted here.
"""
import flax.linen as nn
import jax
import numpy as np
import pytest

from hypert5.models import configs, hypermodel, t5
from hypert5.training import flops, modes
from scripts import load_script

bench = load_script("benchmarks/adaptation_cost.py")


def _random_params(abstract, seed: int, std: float = 0.05):
  """Random values of the given shapes, made in numpy: no init program to compile."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (std * rng.standard_normal(s.shape)).astype(s.dtype),
                      nn.unbox(abstract))


@pytest.fixture(scope="module")
def setup():
  cfg = configs.get_config("tiny")
  hyper_cfg = hypermodel.HyperT5Config(t5=cfg, peft_type="lora", head_hidden=32)
  hyper_obj = modes.Objective("hyper", cfg, hyper_cfg)
  frozen = _random_params(t5.abstract_params(cfg), 0)
  trainable = _random_params(hypermodel.abstract_hyper_params(hyper_cfg), 1)
  rng = np.random.default_rng(0)

  def rows(n, length):  # tokens 2.., then EOS, then padding
    out = np.zeros((n, length), np.int32)
    out[:, :length - 2] = rng.integers(2, cfg.vocab_size, (n, length - 2))
    out[:, length - 2] = 1
    return out

  targets = rows(16, 6)
  train = {"encoder_input_tokens": rows(16, 6), "decoder_target_tokens": targets,
           "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           "decoder_loss_weights": (targets > 0).astype(np.int32)}
  task = bench.TaskData("toy_plain", "toy", rows(1, 12), rows(8, 6), rows(8, 6), train)
  tune_obj = modes.Objective("lora", cfg, hyper_cfg)
  scorer = bench.Scorer(tune_obj, 8, 6)
  return hyper_obj, tune_obj, trainable, frozen, task, scorer


def test_exact_match_and_batches():
  targets = np.array([[5, 6, 1, 0], [7, 1, 0, 0]])
  preds = np.array([[5, 6, 1, 9], [7, 8, 1, 0]])  # tokens after EOS do not count
  assert bench.exact_match(preds, targets) == 50.0
  train = {"x": np.arange(10)[:, None]}
  batches = bench.epoch_batches(train, 4, 5, seed=0)
  assert len(batches) == 5 and all(b["x"].shape == (4, 1) for b in batches)
  # two batches per epoch (remainder dropped), no row twice within an epoch
  assert len(set(np.concatenate([batches[0]["x"], batches[1]["x"]])[:, 0])) == 8


def test_hyper_side_times_counts_and_scores(setup):
  hyper_obj, _, trainable, frozen, task, scorer = setup
  hyper = bench.hyper_side(hyper_obj, trainable, frozen, task, scorer, repeats=2)
  assert hyper["compile_s"] > 0 and hyper["steady_s"] > 0 and len(hyper["times_s"]) == 2
  assert 0.0 <= hyper["exact_match"] <= 100.0
  expected = flops.t5_forward_flops(hyper_obj.t5, 12, hyper_obj.hyper.num_queries,
                                    logits=False)
  assert hyper["flops"] == expected > 0
  assert hyper["xla_flops"] is None or hyper["xla_flops"] > 0
  assert hyper["peft"].batch_size == 1


def test_tuning_stop_rule_and_report(setup):
  hyper_obj, tune_obj, trainable, frozen, task, scorer = setup
  step0 = scorer(frozen, tune_obj.random_peft(jax.random.key(0)), task.val_inputs,
                 task.val_targets)
  at_once = bench.tune(tune_obj, frozen, task, scorer, step0, 1e-2, max_steps=2,
                       eval_every=1, batch_size=8, seed=0)
  assert at_once["reached"] and at_once["steps"] == 0
  assert at_once["train_s"] == 0.0 and at_once["flops"] == 0.0
  assert at_once["step0_exact_match"] == step0 and len(at_once["curve"]) == 1

  capped = bench.tune(tune_obj, frozen, task, scorer, 101.0, 1e-2, max_steps=2,
                      eval_every=1, batch_size=8, seed=0)
  assert not capped["reached"] and capped["steps"] == 2
  assert capped["train_s"] > 0 and capped["compile_s"] > 0
  assert capped["flops_per_step"] == flops.step_flops("lora", tune_obj.t5, 8, 6, 6) > 0
  assert capped["flops"] == 2 * capped["flops_per_step"]
  assert [c["step"] for c in capped["curve"]] == [0, 1, 2]
  assert np.isfinite(capped["curve"][-1]["loss"])

  hyper = {"exact_match": 40.0, "steady_s": 0.01, "compile_s": 1.0, "flops": 1e6}
  rows = {"a": bench.compare(hyper, [capped, at_once]), "b": bench.compare(hyper, [capped])}
  assert rows["a"]["reached"] and rows["a"]["tuning_steps"] == 0
  assert rows["a"]["time_ratio"] == 0.0 and not rows["a"]["ratios_are_lower_bounds"]
  assert rows["b"]["ratios_are_lower_bounds"] and rows["b"]["time_ratio"] > 0
  assert rows["b"]["flops_ratio"] == capped["flops"] / 1e6
  summary = bench.summarize(list(rows.values()))
  assert summary["tasks"] == 2 and summary["reached"] == 1
  assert summary["ratios_are_lower_bounds"]
  assert summary["flops_ratio_of_means"] > 0 and summary["time_ratio_with_compile_of_means"] > 0
  table = bench.format_table(rows, summary)
  assert "mean" in table and "2*" in table  # not reached: the step count is starred
