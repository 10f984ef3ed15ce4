"""DecoderOnlyFeatureConverter: one right-padded stream, loss on targets only; the existing
S-NI, P3, BIG-bench and synthetic tasks convert unchanged."""
import pathlib
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from hypert5.data import decoder_only
from hypert5.data.decoder_only import DecoderOnlyFeatureConverter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tasks"))
import task_fixtures as fx  # noqa: E402  (tests/tasks, shared fixture writers)

LENGTHS = {"hyper_inputs": 4, "inputs": 3, "targets": 4}


def _ds(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})


def _convert(converter, examples, lengths=LENGTHS):
  return list(converter(_ds(examples), lengths).as_numpy_iterator())


EXAMPLES = [{"hyper_inputs": [5, 6, 1], "inputs": [7, 1], "targets": [3, 9, 1]},
            {"hyper_inputs": [8, 1], "inputs": [4, 4, 1], "targets": [2, 1]}]


def test_hyper_stream_and_downstream_stream():
  out = _convert(DecoderOnlyFeatureConverter("hyper"), EXAMPLES)
  assert len(out) == 2 and set(out[0]) == {"hyper_input_tokens", "decoder_input_tokens",
                                           "decoder_target_tokens", "decoder_loss_weights"}
  np.testing.assert_array_equal(out[0]["hyper_input_tokens"], [5, 6, 1, 0])
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [7, 1, 3, 9, 1, 0, 0])
  np.testing.assert_array_equal(out[0]["decoder_input_tokens"], [0, 7, 1, 3, 9, 1, 0])
  np.testing.assert_array_equal(out[0]["decoder_loss_weights"], [0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out[1]["decoder_target_tokens"], [4, 4, 1, 2, 1, 0, 0])
  np.testing.assert_array_equal(out[1]["decoder_loss_weights"], [0, 0, 0, 1, 1, 0, 0])
  lengths = decoder_only.prompt_lengths(np.stack([o["decoder_loss_weights"] for o in out]))
  np.testing.assert_array_equal(lengths, [3, 4])  # bos + inputs
  for o in out:
    assert all(v.dtype == np.int32 for v in o.values())


def test_in_context_prepends_the_few_shot_text_without_loss_on_it():
  out = _convert(DecoderOnlyFeatureConverter("in_context", bos_id=1), EXAMPLES)
  assert "hyper_input_tokens" not in out[0]
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"],
                                [5, 6, 1, 7, 1, 3, 9, 1, 0, 0, 0])
  np.testing.assert_array_equal(out[0]["decoder_input_tokens"],
                                [1, 5, 6, 1, 7, 1, 3, 9, 1, 0, 0])  # bos_id=1 (Llama's <s>)
  np.testing.assert_array_equal(out[0]["decoder_loss_weights"],
                                [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_plain_tasks_and_errors():
  plain = [{"inputs": [7, 1], "targets": [3, 1]}]
  out = _convert(DecoderOnlyFeatureConverter("none"), plain, {"inputs": 3, "targets": 2})
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [7, 1, 3, 1, 0])
  with pytest.raises(ValueError, match="pack=True is not supported"):
    DecoderOnlyFeatureConverter(pack=True)
  with pytest.raises(ValueError, match="few_shot='icl'"):
    DecoderOnlyFeatureConverter("icl")
  with pytest.raises(tf.errors.InvalidArgumentError):  # seqio's length check
    _convert(DecoderOnlyFeatureConverter(), [{"hyper_inputs": [5, 6, 7, 8, 1],
                                              "inputs": [7, 1], "targets": [3, 1]}])
  with pytest.raises(ValueError, match="no target position"):
    decoder_only.prompt_lengths(np.zeros((1, 4)))


def _check_batch(name, lengths, split, few_shot):
  provider = seqio.get_mixture_or_task(name)
  ds = provider.get_dataset(lengths, split=split, shuffle=False, seed=0)
  conv = DecoderOnlyFeatureConverter(few_shot)
  out = next(conv(ds, lengths).batch(4).as_numpy_iterator())
  total = lengths["inputs"] + lengths["targets"] + (
      lengths["hyper_inputs"] if few_shot == "in_context" else 0)
  assert out["decoder_target_tokens"].shape == (4, total)
  w = out["decoder_loss_weights"]
  assert w.sum() > 0 and ((out["decoder_target_tokens"] > 0) | (w == 0)).all()
  np.testing.assert_array_equal(out["decoder_input_tokens"][:, 1:],
                                out["decoder_target_tokens"][:, :-1])
  if few_shot == "hyper":
    assert out["hyper_input_tokens"].shape == (4, lengths["hyper_inputs"])
  return out


def test_existing_tasks_convert_unchanged(tmp_path):
  from tasks import bigbench, p3, sni, synthetic
  sni.register(str(fx.write_sni(tmp_path / "sni")), k=2, vocabulary="byte")
  _check_batch("sni_train", {"hyper_inputs": 512, "inputs": 64, "targets": 32}, "train", "hyper")
  p3.register(str(fx.write_p3(tmp_path / "p3")), k=2, vocabulary="byte")
  _check_batch("p3_t0_train", {"hyper_inputs": 256, "inputs": 64, "targets": 8}, "train",
               "hyper")
  bigbench.register(str(fx.write_bigbench_dir(tmp_path / "bb")), k=2, vocabulary="byte",
                    heldout=["colors"])
  _check_batch("bigbench_train", {"hyper_inputs": 256, "inputs": 96, "targets": 16}, "train",
               "hyper")
  name = synthetic.pipelines.task_name("synthetic", "hyper", "train")
  for few_shot in ("hyper", "in_context"):
    _check_batch(name, synthetic.FAMILY.sequence_lengths("hyper"), "train", few_shot)
  icl = synthetic.pipelines.task_name("synthetic", "icl", "train")
  _check_batch(icl, synthetic.FAMILY.sequence_lengths("icl"), "train", "none")
