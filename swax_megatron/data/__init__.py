"""Data: SentencePiece tokenizer, Megatron indexed datasets, GPTDatasets, the embedded corpus,
the synthetic recall documents of the CPU-scale reproduction (recall_data).

Heavy imports (megatron, sentencepiece) happen inside the functions that need them.
"""

from .embedded import SPLITS, TEST_PLAYS, VALID_PLAYS, embedded_corpus, play_names
from .errors import DataError
from .gpt_datasets import GPTDatasets, build_gpt_datasets, normalize_blend
from .indexed import (IndexedInfo, IndexedStats, read_documents, validate_indexed_dataset,
                      write_indexed_dataset)
from .prepare import (EmbeddedData, datasets_from_config, prepare_embedded_data, rank0_first,
                      tokenizer_from_config)
from .preprocess import iter_documents, preprocess_files
from .recall_data import token_plan, write_recall_dataset
from .stats import unigram_baseline_loss
from .tokenizer import SentencePieceTokenizer, default_tokenizer, train_tokenizer

__all__ = [
    "DataError", "EmbeddedData", "GPTDatasets", "IndexedInfo", "IndexedStats", "SPLITS",
    "SentencePieceTokenizer", "TEST_PLAYS", "VALID_PLAYS", "build_gpt_datasets",
    "datasets_from_config", "default_tokenizer", "embedded_corpus", "iter_documents",
    "normalize_blend", "play_names", "prepare_embedded_data", "preprocess_files", "rank0_first",
    "read_documents", "token_plan", "tokenizer_from_config", "train_tokenizer",
    "unigram_baseline_loss", "validate_indexed_dataset", "write_indexed_dataset",
    "write_recall_dataset",
]
