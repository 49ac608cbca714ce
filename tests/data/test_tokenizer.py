import os

import pytest

from swax_megatron.data import DataError, SentencePieceTokenizer
from swax_megatron.data import tokenizer as tokmod
from swax_megatron.data.embedded import embedded_corpus

SAMPLES = [
    "When shall we three meet again\nIn thunder, lightning, or in rain?",
    "  leading and trailing spaces, double  spaces,\ttabs\tand\r\nCRLF  \n\n\n",
    "Grüße, café, naïve — «quoted» ‘curly’",
    "漢字かな交じり文 и кириллица 🙂🎭 \u200b zero-width",
    "digits 1234567890 and symbols <>{}[]|\\^~`@#$%&*_=+",
    "",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_exact(tiny_tokenizer, text):
    ids = tiny_tokenizer.tokenize(text)
    assert all(0 <= i < tiny_tokenizer.vocab_size for i in ids)
    assert tiny_tokenizer.unk not in ids
    assert tiny_tokenizer.detokenize(ids) == text


def test_held_out_play_round_trip(tiny_tokenizer):
    play = embedded_corpus("valid")[0]
    ids = tiny_tokenizer.tokenize(play)
    assert tiny_tokenizer.detokenize(ids) == play
    assert len(ids) < len(play) / 1.5  # merges compress, even at 512 pieces


def test_byte_fallback_for_unseen_characters(tiny_tokenizer):
    ids = tiny_tokenizer.tokenize("🎭")
    pieces = [tiny_tokenizer.id_to_piece(i) for i in ids]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x8E>", "<0xAD>"]


def test_megatron_interface(tiny_tokenizer):
    t = tiny_tokenizer
    assert (t.unk, t.bos, t.eos, t.pad) == (0, 1, 2, 3)
    assert t.eod == t.eos and t.vocab_size == 512
    assert t.tokenize("\n") == [t.tokenize("a\nb")[1]]  # newline is a single piece
    assert list(t.unique_identifiers) == ["class", "vocab_sha256"]
    assert t.tokenize_batch(SAMPLES[:3]) == [t.tokenize(s) for s in SAMPLES[:3]]


def test_training_is_deterministic(small_docs, tmp_path):
    a = tmp_path / "a.model"
    b = tmp_path / "b.model"
    a.write_bytes(tokmod.train_tokenizer_model(small_docs[:1], 400, num_threads=1))
    b.write_bytes(tokmod.train_tokenizer_model(small_docs[:1], 400, num_threads=1))
    assert a.read_bytes() == b.read_bytes()
    # Thread count changes bookkeeping in the file but not the vocabulary (or the fingerprint).
    c = tmp_path / "c.model"
    c.write_bytes(tokmod.train_tokenizer_model(small_docs[:1], 400, num_threads=2))
    assert SentencePieceTokenizer(c).fingerprint == SentencePieceTokenizer(a).fingerprint


def test_cache_trains_once_and_keys_on_settings(small_docs, tmp_path, monkeypatch):
    calls = []
    real = tokmod.train_tokenizer_model

    def counting(docs, vocab_size, **kw):
        calls.append(vocab_size)
        return real(docs, vocab_size, **kw)

    monkeypatch.setattr(tokmod, "train_tokenizer_model", counting)
    docs = lambda: small_docs[:1]  # noqa: E731
    t1 = tokmod.cached_tokenizer(docs, "corpus-A", tmp_path, 400)
    t2 = tokmod.cached_tokenizer(docs, "corpus-A", tmp_path, 400)
    assert calls == [400] and t1.model_path == t2.model_path
    t3 = tokmod.cached_tokenizer(docs, "corpus-B", tmp_path, 400)
    t4 = tokmod.cached_tokenizer(docs, "corpus-A", tmp_path, 420)
    assert calls == [400, 400, 420]
    assert len({t1.model_path, t3.model_path, t4.model_path}) == 3
    assert sorted(os.listdir(tmp_path)) == sorted(p.model_path.name for p in (t1, t3, t4))


def test_bad_tokenizer_inputs(tmp_path, small_docs):
    with pytest.raises(DataError, match=r"missing\.model: tokenizer model not found"):
        SentencePieceTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "corrupt.model"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(DataError, match=r"corrupt\.model: tokenizer model is corrupt"):
        SentencePieceTokenizer(bad)
    good = tokmod.train_tokenizer_model(small_docs[:1], 400, num_threads=1)
    cut = tmp_path / "truncated.model"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"truncated\.model: tokenizer model is corrupt"):
        SentencePieceTokenizer(cut)
    with pytest.raises(DataError, match="Vocabulary size too high"):
        tokmod.train_tokenizer_model(["a tiny text"], 5000)
    with pytest.raises(DataError, match="vocab_size must be an integer >= 260"):
        tokmod.train_tokenizer_model(small_docs[:1], 100)
    with pytest.raises(DataError, match="no text to train the tokenizer on"):
        tokmod.train_tokenizer_model(["", "  \n\n "], 400)


def test_long_lines_are_cut_for_training():
    long_line = "word " * 5000
    sentences = list(tokmod.training_sentences([long_line + "\n\nshort para"]))
    assert all(len(s.encode()) <= tokmod.MAX_SENTENCE_BYTES for s in sentences)
    assert "".join(sentences[:-1]) == long_line and sentences[-1] == "short para"


def test_pickles_for_dataloader_workers(tiny_tokenizer):
    import pickle

    clone = pickle.loads(pickle.dumps(tiny_tokenizer))
    assert clone.fingerprint == tiny_tokenizer.fingerprint
    assert clone.tokenize(SAMPLES[2]) == tiny_tokenizer.tokenize(SAMPLES[2])
    assert clone.unique_identifiers == tiny_tokenizer.unique_identifiers
