"""The training tokenizer (a SentencePiece BPE .model) as a Hugging Face tokenizer.

    tok = hf_tokenizer_from_sentencepiece("tok.model")   # a transformers TokenizersBackend
    tok.save_pretrained(out)                              # tokenizer.json + tokenizer_config.json

transformers' SpmConverter.build_tokenizer_from_spm_proto builds a `tokenizers` BPE from the
model's own settings (normalizer spec, dummy prefix, byte fallback, user-defined pieces such as
"\\n", merges ranked by piece score), so `AutoTokenizer.from_pretrained(out)` loads offline
without sentencepiece and encodes like `SentencePieceProcessor.encode`. The training data never
had a BOS token (documents are separated by EOS only), so the HF tokenizer adds none either.
Because the converter is followed rather than trusted, every conversion encodes a sample text
with both and refuses a tokenizer whose ids differ.
"""

from __future__ import annotations

import os

from .weights import ConversionError

# Spaces (runs, leading, trailing), newlines, tabs, digits, punctuation, accents, CJK, an emoji
# (byte fallback in a small vocabulary).
SAMPLE_TEXT = ("To be, or not to be: that is the question.\n  Whether 'tis nobler\tin the mind "
               "to suffer 1600 slings  and 42 arrows,\n\nÉtienne naïve café 漢字 🙂 end. ")


def _proto(data: bytes):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    return proto


def hf_tokenizer_from_sentencepiece(model_path: str | os.PathLike):
    """A transformers tokenizer (tokenizers backend) equal to the SentencePiece model at
    `model_path` on SAMPLE_TEXT; ConversionError (one line) when it cannot be built."""
    import sentencepiece
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    try:
        data = open(model_path, "rb").read()
    except OSError as e:
        raise ConversionError(f"{model_path}: tokenizer model unreadable ({e.strerror})") from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
        proto = _proto(data)
    except Exception:  # sentencepiece / protobuf parse errors
        raise ConversionError(f"{model_path}: not a SentencePiece model (failed to parse)") from None
    if proto.trainer_spec.model_type != 2:  # BPE
        raise ConversionError(f"{model_path}: a SentencePiece model of type "
                              f"{proto.trainer_spec.model_type}; the export converts BPE models (type 2)")
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    if len(vocab) != sp.get_piece_size():
        raise ConversionError(f"{model_path}: duplicate pieces in the vocabulary")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, merges=None, legacy=False)
    if backend is None:
        raise ConversionError(f"{model_path}: transformers cannot convert this SentencePiece model")

    def piece(i: int):
        return sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=piece(sp.unk_id()), bos_token=piece(sp.bos_id()),
        eos_token=piece(sp.eos_id()), pad_token=piece(sp.pad_id()), padding_side="left",
        clean_up_tokenization_spaces=False)
    got = tok(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    want = sp.encode(SAMPLE_TEXT)
    if got != want or tok.decode(got) != sp.decode(want):
        raise ConversionError(f"{model_path}: the converted tokenizer encodes a sample text differently "
                              f"from SentencePiece ({len(got)} vs {len(want)} tokens); not exported")
    return tok


def token_ids(sp_path: str | os.PathLike) -> dict:
    """bos / eos / pad / unk ids of a SentencePiece model (None where it has none)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_path))
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id(), "unk": sp.unk_id()}
    return {k: (v if v >= 0 else None) for k, v in ids.items()}


__all__ = ["hf_tokenizer_from_sentencepiece", "token_ids", "SAMPLE_TEXT"]
