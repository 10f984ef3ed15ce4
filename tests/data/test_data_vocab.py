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


def test_sentencepiece_pipelines_share_one_tf_tokenizer(tmp_path):
  """seqio loads a new TF tokenizer on every access; ours makes one, eagerly, so that every
  task's pipeline captures the same one (a 96-task mixture: 8.1 GB -> 2.1 GB resident),
  and it tokenizes, pickles and compares exactly as seqio's does."""
  import pickle
  import sentencepiece as spm
  import tensorflow as tf
  text = tmp_path / "text.txt"
  text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog"
                            for i in range(200)))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"),
                                 vocab_size=40, model_type="unigram", pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1)
  path = str(tmp_path / "sp.model")
  ours = vocab_lib.SentencePieceVocabulary(path, extra_ids=100)
  theirs = seqio.SentencePieceVocabulary(path, extra_ids=100)
  strings = ["the lazy fox", "over 7 dogs <extra_id_0> the"]
  # First reached while tf.data traces a map function, then captured by a second pipeline.
  first, second = [[list(x) for x in tf.data.Dataset.from_tensor_slices(strings).map(
      ours.encode_tf).as_numpy_iterator()] for _ in range(2)]
  assert first == second == [theirs.encode(s) for s in strings]
  assert ours.tf_tokenizer is ours.tf_tokenizer
  assert theirs.tf_tokenizer is not theirs.tf_tokenizer  # what this class exists to avoid
  assert ours == theirs and theirs == ours  # mixtures may combine the two
  again = pickle.loads(pickle.dumps(ours))  # gin deep-copies configurable arguments
  assert again == ours
  assert again.encode_tf(tf.constant("the fox")).numpy().tolist() == theirs.encode("the fox")
