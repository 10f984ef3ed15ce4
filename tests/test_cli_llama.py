"""The `hypert5` program for HyperLlama (decoder-only) on the synthetic family with a tiny
Llama: train -> seqio eval -> export (Orbax, safetensors, PEFT prefix-tuning adapter) ->
the exported prefix as prefix tuning's initial value (hyper-init) -> infer. A few steps at
tiny shapes; the time goes to XLA compiles and tf.data tracing (~45 s of CPU in all).
`hypert5 bench` compiles one more step and is not run here."""
import json
import os

import jax
import numpy as np
import pytest

import hypert5
from hypert5 import main, runs, runs_llama
from hypert5.models import gisting, llama
from hypert5.training import evaluation, peft_io
from hypert5.usage import UsageError

STEPS, GIST = 4, 4
BASE_ARGS = ["--gin_file=experiments/hyperllama_synthetic_tiny.gin",
             f"--gin.hypert5.TrainerConfig.num_steps={STEPS}",
             "--gin.hypert5.TrainerConfig.checkpoint_every=2",
             "--gin.hypert5.TrainerConfig.log_every=1",
             "--gin.hypert5.TrainerConfig.async_checkpoints=False",
             f"--gin.hypert5.HyperLlamaConfig.num_gist={GIST}",
             "--gin.experiment.batch_size=4", "--gin.hypert5.MeshConfig.data=1"]
HELD_OUT = "synthetic_heldout_000"


def _run(mode, model_dir, *extra):
  assert main.main([mode, f"--gin.MODEL_DIR='{model_dir}'", *BASE_ARGS, *extra]) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("hyperllama"))
  _run("train", model_dir)
  return model_dir


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  from tasks import synthetic
  member = synthetic.FAMILY.heldout_members[0]
  d = tmp_path_factory.mktemp("examples")
  ex, q = d / "examples.jsonl", d / "queries.jsonl"
  ex.write_text("".join(json.dumps({"input": i, "output": o}) + "\n"
                        for i, o in synthetic.FAMILY.support(member)))
  q.write_text("".join(json.dumps({"input": i}) + "\n"
                       for i, _ in synthetic.FAMILY.queries(member, "test")[:3]))
  return str(ex), str(q)


def test_train_writes_config_logs_and_checkpoints(trained):
  assert "get_llama_config.name = 'tiny'" in open(
      os.path.join(trained, "config.gin")).read()
  ref = json.load(open(os.path.join(trained, "downstream.json")))
  assert ref["mode"] == "hyper" and ref["model"] == "llama"
  rows = [json.loads(l) for l in open(os.path.join(trained, "train_log.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert all(np.isfinite(r["loss"]) and r["tokens"] > 0 for r in rows)
  assert sorted(os.listdir(os.path.join(trained, "checkpoints")), key=int) == ["2", "4"]


def test_eval_runs_seqio_on_a_held_out_task(trained):
  _run("eval", trained, "--gin_file=runs/eval.gin", f"--gin.EVAL_MIXTURE='{HELD_OUT}'")
  metrics = json.load(open(os.path.join(trained, "eval", f"metrics_{STEPS}.json")))
  assert set(metrics) == {HELD_OUT, "mean"}
  assert 0.0 <= metrics[HELD_OUT]["exact_match"] <= 100.0


def test_export_writes_a_peft_prefix_that_reloads_and_seeds_prefix_tuning(
    trained, examples, tmp_path):
  out = tmp_path / "export"
  _run("export", trained, "--gin_file=runs/export.gin", f"--gin.EXAMPLES_FILE='{examples[0]}'",
       f"--gin.EXPORT_DIR='{out}'")
  assert sorted(os.listdir(out)) == ["orbax", "peft.safetensors", "peft_adapter"]  # no merge
  prefix = peft_io.load_peft_safetensors(str(out / "peft.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, peft_io.load_peft_orbax(str(out / "orbax")), prefix)
  cfg = llama.get_config("tiny")
  assert prefix.keys["decoder_self"].shape == (1, cfg.num_layers, GIST, cfg.num_kv_heads,
                                               cfg.head_dim)
  adapter = json.load(open(out / "peft_adapter" / "adapter_config.json"))
  assert adapter["peft_type"] == "PREFIX_TUNING" and adapter["num_virtual_tokens"] == GIST
  # The adapter stores keys rotated to PEFT's positions; reading it rotates them back.
  reloaded = hypert5.load_peft_prefix(out / "peft_adapter", cfg)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), reloaded, prefix)

  # Prefix tuning from it (hyper-init): the experiment file reads it as INITIAL_PEFT and
  # starts from it exactly; a prefix of another gist count is a one-line error.
  for gist in (GIST, GIST + 1):
    main.parse_gin(["experiments/hyperinit_llama_synthetic_tiny.gin"], [
        f"MODEL_DIR='{tmp_path / 'tune'}'", f"INITIAL_PEFT='{out / 'peft.safetensors'}'",
        f"hypert5.HyperLlamaConfig.num_gist={gist}"])
    exp = runs.experiment()
    assert exp.objective.mode == "prefix" and exp.mixture == "synthetic_plain_heldout_000"
    if gist != GIST:
      with pytest.raises(UsageError, match="peft.safetensors: a Prefix that differs"):
        runs.initial_peft(exp)
      continue
    trainable, _ = exp.objective.init(jax.random.key(0), {}, runs.initial_peft(exp))
    jax.tree.map(np.testing.assert_array_equal, trainable, prefix)


def test_infer_writes_the_models_greedy_continuations(trained, examples, tmp_path):
  output = tmp_path / "out.jsonl"
  _run("infer", trained, "--gin_file=runs/infer.gin", f"--gin.EXAMPLES_FILE='{examples[0]}'",
       f"--gin.QUERIES_FILE='{examples[1]}'", f"--gin.OUTPUT_FILE='{output}'")
  written = [json.loads(l) for l in output.read_text().splitlines()]
  queries = [json.loads(l)["input"] for l in open(examples[1])]
  assert [w["input"] for w in written] == queries
  assert all(isinstance(w["output"], str) for w in written)

  # What the KV-cached decoder predicts after [bos, query, eos] under the generated prefix is
  # the argmax of a plain forward pass over prompt + continuation, token by token.
  main.parse_gin([a[len("--gin_file="):] for a in BASE_ARGS if a.startswith("--gin_file=")],
                 [a[len("--gin."):] for a in BASE_ARGS if a.startswith("--gin.")]
                 + [f"MODEL_DIR='{trained}'"])
  exp = runs.experiment()
  prefix, _, frozen = runs_llama.generate_for_examples(exp, examples[0])
  vocab = runs._provider(exp.mixture).output_features["targets"].vocabulary
  lengths = exp.task_feature_lengths
  predictor = evaluation.DecoderPredictor(exp.objective, exp.eval_batch_size,
                                          lengths["targets"], lengths["inputs"] + 1, 1)
  prompt = np.zeros((exp.eval_batch_size, lengths["inputs"] + 1), np.int32)
  plen = np.ones((exp.eval_batch_size,), np.int32)
  for i, q in enumerate(queries):
    ids = [0, *vocab.encode(q), 1]
    prompt[i, :len(ids)], plen[i] = ids, len(ids)
  generated = np.asarray(predictor._predict({}, frozen, prefix, prompt, plen))
  streams = np.zeros((len(queries), prompt.shape[1] + generated.shape[1]), np.int32)
  for i in range(len(queries)):  # right-padded: causal attention never sees the pads
    streams[i, :plen[i] + generated.shape[1]] = np.concatenate([prompt[i, :plen[i]],
                                                                generated[i]])
  forward = jax.jit(gisting.downstream_logits, static_argnums=0)
  all_logits = forward(exp.objective.llama, frozen, streams, prefix)
  for i, logits in enumerate(np.asarray(all_logits)):
    new = generated[i]
    steps = int(np.argmax(new == 1)) + 1 if (new == 1).any() else len(new)
    np.testing.assert_array_equal(np.argmax(logits[plen[i] - 1:plen[i] - 1 + steps], -1),
                                  new[:steps])
    assert written[i]["output"] == vocab.decode([int(t) for t in new[:steps] if t != 1])


def test_in_context_baseline_puts_the_examples_before_the_query():
  main.parse_gin(["experiments/baseline_icl_llama_synthetic_tiny.gin"], ["MODEL_DIR='/unused'"])
  exp = runs.experiment()
  assert exp.objective.mode == "full"
  lengths = exp.task_feature_lengths
  stream = lengths["hyper_inputs"] + lengths["inputs"] + lengths["targets"]
  assert runs_llama.batch_shapes(exp) == {k: (exp.batch_size, stream) for k in (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")}


def test_prompts_end_before_the_first_target():
  predictor = evaluation.DecoderPredictor.__new__(evaluation.DecoderPredictor)
  predictor.prompt_length = 4
  feats = {"decoder_input_tokens": np.array([[0, 7, 1, 3, 9, 1], [0, 5, 6, 1, 4, 1],
                                             [0, 0, 0, 0, 0, 0]]),
           "decoder_loss_weights": np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0],
                                             [0, 0, 0, 0, 0, 0]])}
  prompt, lengths = predictor.prompts(feats)
  np.testing.assert_array_equal(lengths, [3, 4, 1])
  np.testing.assert_array_equal(prompt, [[0, 7, 1, 0], [0, 5, 6, 1], [0, 0, 0, 0]])


@pytest.mark.parametrize("files, message", [
    (["experiments/synthetic_tiny.gin", "models/llama_tiny.gin"],
     "experiment.model is a LlamaConfig but experiment.hyper is a HyperT5Config"),
    (["experiments/hyperllama_synthetic_tiny.gin", "runs/peft_tune.gin"],
     "has no few-shot text"),
])
def test_mixed_families_and_bad_layouts_are_one_line_errors(files, message, capsys, tmp_path):
  args = [f"--gin_file={f}" for f in files]
  extra = (["--gin.MIXTURE='synthetic_plain_heldout_000'", "--gin.decoder_only.few_shot="
            "'in_context'"] if "runs/peft_tune.gin" in files else [])
  assert main.main(["train", f"--gin.MODEL_DIR='{tmp_path}'", *args, *extra]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err
