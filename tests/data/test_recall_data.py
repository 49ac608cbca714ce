"""The synthetic recall documents (swax_megatron/data/recall_data.py), their indexed dataset and
tools/make_recall_data.py, and the evaluation task built on the same generator."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swax_megatron.data import DataError, read_documents
from swax_megatron.data import recall_data as rd
from swax_megatron.eval import get_task, oracle_argmax

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_recall_data.py"


@pytest.fixture(scope="module")
def plan(tiny_tokenizer):
    return rd.token_plan(tiny_tokenizer)


def test_plan_is_the_byte_pieces(tiny_tokenizer, plan):
    def pieces(ids):
        return [tiny_tokenizer.id_to_piece(i) for i in ids]

    def byte_pieces(first, count):
        return [f"<0x{b:02X}>" for b in range(first, first + count)]

    assert pieces(plan.haystack) == byte_pieces(0x80, 16)
    assert pieces(plan.keys) == byte_pieces(0xC0, 24)
    assert pieces(plan.values) == byte_pieces(0xD8, 32)
    assert pieces([plan.marker]) == ["<0xF8>"]


def test_plan_refuses_a_tokenizer_without_byte_pieces():
    class NoBytes:
        def tokenize(self, text):
            return [0] * len(text)  # <unk> for everything

    with pytest.raises(DataError, match="byte-fallback"):
        rd.token_plan(NoBytes())


def _chain_ok(hay_ids, plan):
    succ, _ = rd.markov_chain()
    idx = [plan.haystack.index(t) for t in hay_ids]
    return all(c in succ[a, b] for a, b, c in zip(idx, idx[1:], idx[2:]))


@pytest.mark.parametrize("length", [64, 256, 1000])
def test_mqar_document(plan, length):
    for index in range(20):
        doc = rd.make_document("mqar", plan, length, random.Random(index))
        ids = doc.ids
        assert len(ids) == length - 1 and len(doc.probes) == rd.NUM_PAIRS
        seen_dist = []
        for start, end, dist in doc.probes:
            assert end == start + 1
            key, value = ids[start - 1], ids[start]
            assert key in plan.keys and value in plan.values
            where = [i for i, t in enumerate(ids) if t == key]
            assert where == [start - 1 - dist, start - 1]  # planted once, queried once
            assert ids[start - dist] == value
            assert 2 <= dist <= length - 3
            seen_dist.append(dist)
        hay = [t for t in ids if t in plan.haystack]
        assert len(hay) == len(ids) - 4 * rd.NUM_PAIRS and _chain_ok(hay, plan)
        if length >= 256:  # stratified: one distance in each eighth of [2, length - 3]
            w = (length - 4) / rd.NUM_PAIRS  # (a distance that no longer fits shrinks a little)
            for i, d in enumerate(sorted(seen_dist)):
                assert 2 + i * w - 4 <= d < 2 + (i + 1) * w


def test_passkey_document(plan):
    depths = []
    for index in range(50):
        doc = rd.make_document("passkey", plan, 128, random.Random(index))
        (start, end, dist), = doc.probes
        assert end == len(doc.ids) and end - start == rd.PASSKEY_TOKENS
        assert doc.ids[start - 1] == plan.marker
        assert doc.ids.count(plan.marker) == 2
        assert doc.ids[start - dist:end - dist] == doc.ids[start:end]
        assert all(t in plan.values for t in doc.ids[start:end])
        depths.append(start - dist)
    assert min(depths) < 20 and max(depths) > 80  # spread over the document


@pytest.mark.parametrize("cap", [2, 32, 200])
def test_passkey_distance_cap(plan, cap):
    """max_distance caps the plant-to-query distance and spreads it over [2, cap]; training
    documents take TRAIN_MAX_DISTANCE, evaluation instances (None) the whole document."""
    dists = []
    for index in range(200):
        doc = rd.make_document("passkey", plan, 128, random.Random(index), max_distance=cap)
        (start, end, dist), = doc.probes
        assert doc.ids[start - dist:end - dist] == doc.ids[start:end]
        assert doc.ids.count(plan.marker) == 2 and len(doc.ids) == 127
        dists.append(dist)
    top = min(cap, 125)  # the farthest plant: the document's first token
    assert 2 <= min(dists) <= 2 + top // 10 and top - top // 10 <= max(dists) <= top
    train = [rd.training_document(plan, 128, 0, i).probes[0][2] for i in range(200)]
    assert max(train) <= rd.TRAIN_MAX_DISTANCE < max(
        d.probes[0][2] for d in rd.training_documents(plan, 128, 200, max_distance=None))


def test_bad_arguments(plan):
    with pytest.raises(ValueError, match="kind"):
        rd.make_document("niah", plan, 256, random.Random(0))
    with pytest.raises(ValueError, match="length"):
        rd.make_document("mqar", plan, 63, random.Random(0))
    for bad in (1, 0, True, 4.0):
        with pytest.raises(ValueError, match="max_distance must be None or an integer >= 2"):
            rd.make_document("passkey", plan, 128, random.Random(0), max_distance=bad)


def test_training_documents_are_deterministic_and_of_the_planned_kinds(plan):
    a = [d.ids for d in rd.training_documents(plan, 64, 40, seed=3)]
    assert a == [d.ids for d in rd.training_documents(plan, 64, 40, seed=3)]
    assert a != [d.ids for d in rd.training_documents(plan, 64, 40, seed=4)]
    kinds = [d.kind for d in rd.training_documents(plan, 64, 200)]
    assert abs(kinds.count("mqar") / len(kinds) - rd.MQAR_FRACTION) < 0.1
    assert set(kinds) <= set(rd.KINDS)


def test_eval_task_is_the_same_generator_held_out(tiny_tokenizer, plan):
    task = get_task("synth_mqar")
    train = {d.ids for d in rd.training_documents(plan, 256, 200)}
    for i in range(20):
        s = task.sample(tiny_tokenizer, length=256, index=i)
        assert len(s.ids) == 255 and s.ids not in train
        assert len(s.probes) == rd.NUM_PAIRS
        recs = task.score_probes(s, oracle_argmax(s))
        assert [r["score"] for r in recs] == [1.0] * rd.NUM_PAIRS
        assert {r["distance"] for r in recs} == {p.distance for p in s.probes}
        wrong = list(oracle_argmax(s))
        for p in s.probes:
            wrong[p.start - 1] = plan.haystack[0]
        assert [r["score"] for r in task.score_probes(s, wrong)] == [0.0] * rd.NUM_PAIRS
    # same instance from the same index; 2x-8x the training length
    assert task.sample(tiny_tokenizer, length=256, index=3).ids == s.__class__.from_dict(
        task.sample(tiny_tokenizer, length=256, index=3).to_dict()).ids
    long = task.sample(tiny_tokenizer, length=2048, index=0)
    assert max(p.distance for p in long.probes) > 1024
    pk = get_task("synth_passkey").sample(tiny_tokenizer, length=512, index=0)
    assert len(pk.probes) == 1 and pk.probes[0].end - pk.probes[0].start == rd.PASSKEY_TOKENS
    assert task.distance_edges([256, 2048]) == [0, 16, 32, 64, 128, 256, 512, 1024, 2048]


def test_write_dataset_reuse_and_rewrite(tiny_tokenizer, plan, tmp_path):
    prefix = tmp_path / "recall"
    meta = rd.write_recall_dataset(prefix, tiny_tokenizer, length=64, count=30, seed=1)
    assert not meta["reused"] and meta["kinds"]["mqar"] + meta["kinds"]["passkey"] == 30
    docs = read_documents(prefix)
    assert len(docs) == 30 and all(len(d) == 64 and d[-1] == tiny_tokenizer.eod for d in docs)
    assert [tuple(int(t) for t in d[:-1]) for d in docs] == \
        [d.ids for d in rd.training_documents(plan, 64, 30, seed=1)]
    stamp = os.stat(f"{prefix}.bin").st_mtime_ns
    assert rd.write_recall_dataset(prefix, tiny_tokenizer, length=64, count=30, seed=1)["reused"]
    assert os.stat(f"{prefix}.bin").st_mtime_ns == stamp
    again = rd.write_recall_dataset(prefix, tiny_tokenizer, length=64, count=31, seed=1)
    assert not again["reused"] and len(read_documents(prefix)) == 31
    wide = rd.write_recall_dataset(prefix, tiny_tokenizer, length=64, count=31, seed=1,
                                   max_distance=None)  # another distance cap: rewritten
    assert not wide["reused"] and wide["recall"]["max_distance"] is None
    assert [tuple(int(t) for t in d[:-1]) for d in read_documents(prefix)] == \
        [d.ids for d in rd.training_documents(plan, 64, 31, seed=1, max_distance=None)]
    with pytest.raises(DataError, match="max_distance must be an integer >= 2, got 1"):
        rd.write_recall_dataset(prefix, tiny_tokenizer, length=64, count=31, max_distance=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recall.bin", "recall.idx",
                                                          "recall.meta.json"]


def test_one_document_per_megatron_sample(tiny_tokenizer, tmp_path, gloo_world1):
    """Documents of seq_length tokens (eod included) fill Megatron's samples one each: every
    sample's input is a whole document, its last input token the eod."""
    from swax_megatron.data import build_gpt_datasets

    prefix = tmp_path / "recall"
    rd.write_recall_dataset(prefix, tiny_tokenizer, length=64, count=40)
    ds = build_gpt_datasets(tiny_tokenizer, seq_length=64, seed=0, num_samples=[50, None, None],
                            blend=[str(prefix)], split="100,0,0", cache_dir=tmp_path / "idx")
    docs = {tuple(int(t) for t in d) for d in read_documents(prefix)}
    for i in range(50):
        tokens = ds.train[i]["tokens"].tolist()
        assert tuple(tokens) in docs


def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=120)


def test_tool(tiny_tokenizer, tmp_path):
    model = str(tiny_tokenizer.model_path)
    args = ["--output-prefix", str(tmp_path / "r"), "--seq-length", "64", "--documents", "12",
            "--tokenizer-model", model]
    out = _run_tool(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("wrote") and "12 documents" in out.stdout
    again = _run_tool(*args)
    assert again.returncode == 0 and again.stdout.startswith("found")
    for bad, says in ((["--seq-length", "8"], "length must be an integer >= 64"),
                      (["--documents", "12", "--max-distance", "1"], "max_distance must be"),
                      (["--documents", "12", "--max-distance", "far"], "integer or 'none'"),
                      (["--tokenizer-model", str(tmp_path / "none.model")], "not found")):
        argv = list(args)
        argv[argv.index(bad[0]) + 1] = bad[1]
        argv += bad[2:]
        res = _run_tool(*argv)
        assert res.returncode == 2 and says in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "none.model").exists()
    wide = _run_tool(*args[:1], str(tmp_path / "w"), *args[2:], "--max-distance", "none")
    assert wide.returncode == 0 and "distances <= the length" in wide.stdout, wide.stderr
    assert np.array_equal(read_documents(tmp_path / "r")[0][:-1],
                          list(rd.training_document(rd.token_plan(tiny_tokenizer), 64, 0, 0).ids))
