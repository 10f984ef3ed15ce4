"""Hyperpretraining tasks: c4_caclm (TFDS, mocked) and text_caclm over local files."""
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import task_fixtures as fx
from hypert5.data import get_vocabulary
from tasks import caclm

LENGTHS = {"hyper_inputs": 64, "inputs": 32, "targets": 16}


def _check_caclm_rows(rows, lengths=LENGTHS):
  for r in rows:
    a_d = r["hyper_inputs"][:-1]  # less the final eos
    assert (a_d == 1).sum() == 1 and a_d[0] != 1 and a_d[-1] != 1  # A <eos> D, both non-empty
    assert 2 <= len(r["inputs"]) <= lengths["inputs"] and r["inputs"][-1] == 1
    assert 2 <= len(r["targets"]) <= lengths["targets"] and r["targets"][-1] == 1
    assert len(r["hyper_inputs"]) <= lengths["hyper_inputs"]


def test_c4_caclm_on_mock_tfds(monkeypatch):
  caclm.register_c4(vocabulary="byte", span_length=40)
  # mock_data generates examples from the builder's code but has no split sizes to report.
  monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
  with tfds.testing.mock_data(num_examples=20):
    rows = fx.examples("c4_caclm", LENGTHS, "train", n=8)
    out = fx.batch("c4_caclm", LENGTHS, "validation", size=2)
  assert len(rows) == 8
  _check_caclm_rows(rows)
  assert out["hyper_encoder_input_tokens"].shape == (2, 64)
  caclm.register_c4()  # the default again (T5's vocabulary) for other tests


def test_text_caclm_over_txt_and_jsonl(tmp_path):
  (tmp_path / "a.txt").write_text("\n".join(f"line {i} of the first file" for i in range(50)))
  (tmp_path / "b.txt").write_text("\n".join(f"another line {i} here" for i in range(50)))
  caclm.register_text(str(tmp_path / "*.txt"), vocabulary="byte", lines_per_doc=8)
  rows = fx.examples("text_caclm", LENGTHS, "train", n=20)
  assert len(rows) == 20
  _check_caclm_rows(rows)
  v = get_vocabulary("byte")
  # C continues B in the original text (documents are joined without separators).
  text = ((tmp_path / "a.txt").read_text() + (tmp_path / "b.txt").read_text()).replace("\n", "")
  for r in rows:
    b, c = v.decode(r["inputs"][:-1].tolist()), v.decode(r["targets"][:-1].tolist())
    assert (b + c).replace("\n", "") in text

  docs = [{"text": f"document {i} " + "word " * 30, "url": "x"} for i in range(10)]
  (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  caclm.register_text(str(tmp_path / "*.jsonl"), vocabulary="byte", name="jsonl_caclm")
  _check_caclm_rows(fx.examples("jsonl_caclm", LENGTHS, "train", n=5))


def test_text_caclm_bad_files(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  caclm.register_text(str(tmp_path / "*.txt"), vocabulary="byte")
  with pytest.raises(Exception, match=r"empty.txt: task text_caclm: the file is empty"):
    fx.examples("text_caclm", LENGTHS, "train")
  caclm.register_text(str(tmp_path / "*.nothing"), vocabulary="byte")
  with pytest.raises(Exception, match=r"task text_caclm: split train: no file matches"):
    fx.examples("text_caclm", LENGTHS, "train")
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
  caclm.register_text(str(tmp_path / "bad.jsonl"), vocabulary="byte")
  with pytest.raises(tf.errors.OpError, match=r"bad.jsonl: task text_caclm: malformed JSON "
                     r"on line 2"):
    fx.examples("text_caclm", LENGTHS, "train")


def test_shared_corpus(shared_data):
  vocab = get_vocabulary(str(shared_data / "t5_spiece.model"))
  caclm.register_text(str(shared_data / "corpus" / "tinyshakespeare.txt"), vocabulary=vocab)
  lengths = {"hyper_inputs": 256, "inputs": 128, "targets": 32}
  rows = fx.examples("text_caclm", lengths, "train", n=16)
  _check_caclm_rows(rows, lengths)
  truncated = np.array([r["hyper_inputs_truncated"] for r in rows])
  assert (truncated >= 0).all()
  assert np.mean([len(r["hyper_inputs"]) for r in rows]) > 100  # spans are long, not lines
