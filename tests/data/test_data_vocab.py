"""Vocabularies: bytes for file-free runs, T5's SentencePiece by path; T5 sentinels."""
import pytest
import seqio

from hypert5.data import get_vocabulary, sentinel_id
from hypert5.data import vocab as vocab_lib


def test_byte_vocabulary_has_t5_sentinels():
  v = get_vocabulary("byte")
  assert isinstance(v, seqio.ByteVocabulary) and v.vocab_size == 3 + 256 + 100
  assert sentinel_id(v, 0) == v.vocab_size - 1 and sentinel_id(v, 99) == 259
  assert v.decode([sentinel_id(v, 0)] + v.encode("ab")) == "ab"
  with pytest.raises(ValueError, match="sentinel 100 does not exist"):
    sentinel_id(v, 100)
  assert get_vocabulary("byte") is v  # cached: tasks share one object


def test_sentencepiece_path_is_lazy():
  v = get_vocabulary(vocab_lib.DEFAULT_SPM_PATH)  # gs://; nothing is read until used
  assert isinstance(v, seqio.SentencePieceVocabulary) and v.extra_ids == 100


def test_t5_sentencepiece_from_shared_data():
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/t5_spiece.model"
  if not path.exists():
    pytest.skip("no shared data")
  v = get_vocabulary(str(path))
  assert v.vocab_size == 32100 and v.eos_id == 1 and v.pad_id == 0
  assert sentinel_id(v, 0) == 32099 and v.encode("<extra_id_0>") == [32099]
