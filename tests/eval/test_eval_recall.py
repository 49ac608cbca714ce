"""Synthetic recall tasks (passkey, MQAR) and the training documents made from them: answers,
probes, distances, lengths, determinism, scoring that can fail."""

import json
import random
import re

import pytest

from swax_megatron.data.embedded import embedded_corpus
from swax_megatron.data.preprocess import iter_documents
from swax_megatron.eval import (MQARTask, PasskeyTask, accuracy_grid, distance_buckets,
                                get_task, oracle_argmax, training_documents, write_jsonl)
from swax_megatron.eval.recall import MQAR_PLANT, MQAR_QUERY, PASSKEY_NEEDLE, PASSKEY_QUERY
from swax_megatron.eval.tasks import Sample


def _decode(tok, ids, a, b):
    return tok.detokenize(list(ids)[a:b])


@pytest.mark.parametrize("filler", ["noise", "corpus"])
def test_passkey_sample(tokenizer, filler):
    task = PasskeyTask(filler=filler)
    for depth in (0, 20, 50, 80, 100):
        s = task.sample(tokenizer, length=1024, depth=depth, seed=5)
        key = s.metadata["passkey"]
        assert re.fullmatch(r"[1-9]\d{4}", key) and s.answers == (key,)
        assert s.text.count(PASSKEY_NEEDLE.format(passkey=key)) == 1
        assert s.text.endswith("\n" + PASSKEY_QUERY + f" {key}.")
        assert s.prompt.endswith(PASSKEY_QUERY) and s.text.startswith(s.prompt)
        assert list(s.ids) == tokenizer.tokenize(s.text)
        assert list(s.prompt_ids) == list(s.ids[:len(s.prompt_ids)])
        # the whole document fits the length, within the stated tolerance
        m = s.metadata
        assert 1024 - m["tolerance"] <= len(s.ids) <= 1024
        # the probe is the answer; its distance reaches back to the passkey in the needle
        (p,) = s.probes
        assert _decode(tokenizer, s.ids, p.start, p.end) == key
        assert _decode(tokenizer, s.ids, p.start - p.distance, p.end - p.distance) == key
        assert p.distance == m["distance"] > 0
        # the needle at the requested depth of the filler
        span = m["context_end"] - m["context_start"] - (m["needle_end"] - m["needle_start"])
        assert abs(m["needle_start"] - (m["context_start"] + depth / 100 * span)) \
            <= m["depth_bound_tokens"]
        assert _decode(tokenizer, s.ids, m["needle_start"], m["needle_end"]).strip() \
            == PASSKEY_NEEDLE.format(passkey=key)
    if filler == "corpus":  # evaluation filler is the held-out plays
        assert any(line in embedded_corpus("test")[0] + embedded_corpus("test")[1]
                   for line in s.text.split("\n")[3:6])


def test_passkey_scores_can_fail(tokenizer):
    task = get_task("passkey")
    samples = list(task.grid(tokenizer, lengths=[300, 900], depths=[0, 50, 100], num_samples=3))
    assert len(samples) == 18
    assert accuracy_grid([task.record(s, f" {s.answers[0]}.") for s in samples])["mean"] == 100
    assert accuracy_grid([task.record(s, "") for s in samples])["mean"] == 0
    rng = random.Random(0)
    guess = [task.record(s, f" {rng.randint(10000, 99999)}.") for s in samples]
    assert accuracy_grid(guess)["mean"] < 10
    # teacher forcing: the oracle is always right; a model that predicts the previous token,
    # or always the same token, is never right
    right = [r for s in samples for r in task.score_probes(s, oracle_argmax(s))]
    assert all(r["score"] == 1.0 for r in right) and len(right) == 18
    copy = [r for s in samples for r in task.score_probes(s, list(s.ids))]
    assert all(r["score"] == 0.0 for r in copy)
    const = [r for s in samples for r in task.score_probes(s, [s.ids[-2]] * len(s.ids))]
    assert sum(r["score"] for r in const) == 0


def test_mqar_sample(tokenizer):
    task = MQARTask(num_pairs=8)
    s = task.sample(tokenizer, length=1024, seed=1, index=2)
    m = s.metadata
    pairs = m["pairs"]
    assert len(pairs) == 8 == len(s.probes) and len({p["key"] for p in pairs}) == 8
    assert s.depth is None and list(s.ids) == tokenizer.tokenize(s.text)
    assert 1024 - m["tolerance"] <= len(s.ids) <= 1024
    for p in pairs:
        assert re.fullmatch(r"[1-9]\d{3}", p["value"])
        plant = MQAR_PLANT.format(key=p["key"], value=p["value"])
        query = MQAR_QUERY.format(key=p["key"], value=p["value"])
        assert s.text.count(plant) == 1 and s.text.count(query) == 1
        assert s.text.index(plant) < s.text.index(query)  # planted before it is queried
        assert _decode(tokenizer, s.ids, p["plant_start"], p["plant_start"] + 4) == p["value"]
        assert p["distance"] == p["query_start"] - p["plant_start"] > 0
    for probe in s.probes:
        assert _decode(tokenizer, s.ids, probe.start, probe.end) == probe.answer
        assert tokenizer.detokenize(list(s.ids[:probe.start])).endswith("? It is ")
    last = pairs[-1]
    assert s.answers == (last["value"],)
    assert s.prompt.endswith(f"What is the code for {last['key']}? It is")
    assert s.text.startswith(s.prompt + f" {last['value']}.")
    assert m["distance"] == last["distance"]


def test_mqar_distances_spread_as_requested(tokenizer):
    task = MQARTask(num_pairs=8)
    lo, hi = task.distance_range(tokenizer, 1024)
    assert 10 < lo < 60 and 960 < hi <= 1024
    got, targets = [], []
    for i in range(40):
        s = task.sample(tokenizer, length=1024, index=i)
        assert s.metadata["distance_range"][1] > 950
        tg = sorted(p["distance_target"] for p in s.metadata["pairs"])
        lo_i, hi_i = s.metadata["distance_range"]
        # stratified: one target in each eighth of the range
        step = (hi_i - lo_i) / 8
        assert [min(7, max(0, int((t - lo_i - 0.01) // step))) for t in tg] == list(range(8))
        for p in s.metadata["pairs"]:
            got.append(p["distance"])
            targets.append(p["distance_target"])
    errors = [abs(a - b) for a, b in zip(got, targets)]
    assert sum(errors) / len(errors) < 20 and max(errors) < 120
    # measured distances fill the range: each quarter holds about a quarter of the queries
    quarters = [0] * 4
    for d in got:
        quarters[min(3, max(0, int((d - lo) * 4 // (hi - lo + 1))))] += 1
    assert all(0.18 * len(got) <= q <= 0.32 * len(got) for q in quarters), quarters
    # a narrower band is honoured
    band = MQARTask(num_pairs=4, min_distance=100, max_distance=300)
    ds = [p["distance"] for i in range(10)
          for p in band.sample(tokenizer, length=1024, index=i).metadata["pairs"]]
    assert 60 <= min(ds) and max(ds) <= 340 and max(ds) - min(ds) > 150


def test_mqar_scores_bucketed_by_distance(tokenizer):
    task = MQARTask(num_pairs=6)
    samples = [task.sample(tokenizer, length=768, index=i) for i in range(6)]
    oracle = [r for s in samples for r in task.score_probes(s, oracle_argmax(s))]
    assert len(oracle) == 36 and {r["score"] for r in oracle} == {1.0}
    # a model that recalls only within 256 tokens (the answer tokens are right only there)
    def short_memory(s):
        pred = oracle_argmax(s)
        for p in s.probes:
            if p.distance >= 256:
                pred[p.start - 1] = s.ids[p.start - 1]  # predicts a wrong first digit
        return pred
    recs = [r for s in samples for r in task.score_probes(s, short_memory(s))]
    assert {r["token_accuracy"] for r in recs if r["distance"] >= 256} == {0.75}  # 3 of 4 digits
    b = distance_buckets(recs, edges=[0, 256, 768])
    assert b["accuracy"] == [100.0, 0.0] and sum(b["counts"]) == 36
    assert accuracy_grid(recs)["depths"] == [None]
    # generation scoring: exact value of the last query
    assert all(task.score(s, f" {s.answers[0]}.") == 1.0 for s in samples)
    assert all(task.score(s, " 0000.") == 0.0 for s in samples)


def test_recall_determinism_and_serialisation(tokenizer):
    for task in (PasskeyTask(filler="corpus"), MQARTask()):
        depth = 40 if task.uses_depth else None
        a = task.sample(tokenizer, length=700, depth=depth, seed=3, index=1)
        assert a.to_dict() == type(task)(**_settings(task)).sample(
            tokenizer, length=700, depth=depth, seed=3, index=1).to_dict()
        b = task.sample(tokenizer, length=700, depth=depth, seed=4, index=1)
        assert a.text != b.text
        back = Sample.from_dict(json.loads(json.dumps(a.to_dict())))
        assert back == a


def _settings(task):
    return {k: v for k, v in task.config().items() if k != "task"}


def test_bad_settings_are_refused(tokenizer):
    with pytest.raises(ValueError):
        MQARTask(num_pairs=0)
    with pytest.raises(ValueError):
        MQARTask(min_distance=50, max_distance=10)
    with pytest.raises(ValueError):
        PasskeyTask(filler="no/such/file")
    with pytest.raises(ValueError, match="depth=None"):
        MQARTask().sample(tokenizer, length=512, depth=50)
    with pytest.raises(ValueError, match="too short"):
        MQARTask(num_pairs=16).sample(tokenizer, length=256)
    with pytest.raises(ValueError, match="unknown evaluation task"):
        get_task("niah_single_9")


def test_training_documents(tokenizer, tmp_path):
    task = MQARTask(num_pairs=6)
    docs = list(training_documents(task, tokenizer, count=12, length=512, seed=0))
    assert docs == list(training_documents(task, tokenizer, count=12, length=512, seed=0))
    assert docs[4:] == list(training_documents(task, tokenizer, count=8, length=512, start=4))
    assert len(set(docs)) == 12
    other = list(training_documents(task, tokenizer, count=12, length=512, seed=1))
    assert not set(docs) & set(other)
    evals = [task.sample(tokenizer, length=512, index=i).text for i in range(12)]
    assert not set(docs) & set(evals)
    train_text = "\n".join(embedded_corpus("train"))
    test_text = "\n".join(embedded_corpus("test"))
    for doc in docs:
        assert len(tokenizer.tokenize(doc)) <= 512
        assert doc.count("What is the code for ") == 6 == doc.count("The code for ")
        filler = [ln for ln in doc.split("\n")[1:-1] if "code for" not in ln and len(ln) > 25]
        assert filler and all(ln in train_text for ln in filler)
        assert not all(ln in test_text for ln in filler)
    pk = list(training_documents(PasskeyTask(), tokenizer, count=5, length=400))
    assert all(PASSKEY_QUERY in d and len(tokenizer.tokenize(d)) <= 400 for d in pk)
    # JSON lines the preprocessing tool reads back unchanged
    path = tmp_path / "recall.jsonl"
    assert write_jsonl(path, docs) == 12
    assert list(iter_documents(path)) == docs
