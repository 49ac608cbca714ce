"""RULER needle-in-a-haystack: format, variants, length fitting, depth placement, determinism and
scoring (an oracle scores 100, models that cannot recall score about 0)."""

import json
import random
import re

import pytest

from swax_megatron.data.embedded import embedded_corpus
from swax_megatron.eval import NIAH_VARIANTS, NiahTask, accuracy_grid, get_task
from swax_megatron.eval.niah import RULER_DEPTHS
from swax_megatron.eval.tasks import string_match_all, string_match_part
from swax_megatron.eval.text import NOISE, is_well_formed, random_number, random_uuid

VARIANTS = list(NIAH_VARIANTS)
# RULER's synthetic.yaml, verbatim: haystack, key type, value type, keys, values, queries.
RULER = {
    "single_1": ("noise", "words", "numbers", 1, 1, 1),
    "single_2": ("essay", "words", "numbers", 1, 1, 1),
    "single_3": ("essay", "words", "uuids", 1, 1, 1),
    "multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "multiquery": ("essay", "words", "numbers", 1, 1, 4),
}
SINGLE_HEAD = ("A special magic {t} is hidden within the following text. Make sure to memorize "
               "it. I will quiz you about the {t} afterwards.\n")
PLURAL_HEAD = ("Some special magic {t}s are hidden within the following text. Make sure to "
               "memorize it. I will quiz you about the {t}s afterwards.\n")
SINGLE_TAIL = ("\nWhat is the special magic {t} for {q} mentioned in the provided text? "
               "The special magic {t} for {q} mentioned in the provided text is")
PLURAL_TAIL = ("\nWhat are all the special magic {t}s for {q} mentioned in the provided text? "
               "The special magic {t}s for {q} mentioned in the provided text are")


@pytest.fixture(scope="module")
def samples(tokenizer):
    """Two samples per variant at 1024 tokens (depths 0 and 60)."""
    return {v: [NiahTask(v).sample(tokenizer, length=1024, depth=d, seed=3, index=i)
                for i, d in enumerate((0, 60))] for v in VARIANTS}


def test_variants_are_rulers():
    for v, (hay, k, val, nk, nv, nq) in RULER.items():
        s = NIAH_VARIANTS[v]
        assert (s.haystack, s.type_needle_k, s.type_needle_v, s.num_needle_k, s.num_needle_v,
                s.num_needle_q) == (hay, k, val, nk, nv, nq), v
    assert set(RULER) == set(NIAH_VARIANTS)
    assert RULER_DEPTHS[:4] == (0, 3, 5, 8) and RULER_DEPTHS[-1] == 100 and len(RULER_DEPTHS) == 40


@pytest.mark.parametrize("variant", VARIANTS)
def test_ruler_template_and_answer_prefix(samples, variant):
    for s in samples[variant]:
        m = s.metadata
        t = NIAH_VARIANTS[variant].type_needle_v[:-1]  # "number", "uuid"
        single = len(s.answers) == 1
        head = (SINGLE_HEAD if single else PLURAL_HEAD).format(t=t)
        tail = (SINGLE_TAIL if single else PLURAL_TAIL).format(t=t, q=m["query"])
        assert s.prompt.startswith(head)
        assert s.prompt.endswith(tail)
        assert s.prompt.endswith(m["answer_prefix"])
        assert m["answer_prefix"].startswith(" The special")
        assert s.gen_tokens == 128
        # every needle is in RULER's needle format, with the plural type
        for n in m["needles"]:
            line = f"One of the special magic {t}s for {n['key']} is: {n['value']}."
            assert s.prompt.count(line) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_needles_well_formed_and_answers_right(samples, variant):
    spec = NIAH_VARIANTS[variant]
    for s in samples[variant]:
        needles = s.metadata["needles"]
        assert len(needles) == max(spec.num_needle_k, spec.num_needle_q) * spec.num_needle_v
        for n in needles:
            assert is_well_formed(spec.type_needle_k, n["key"]), n["key"]
            assert is_well_formed(spec.type_needle_v, n["value"]), n["value"]
        queried = [n for n in needles if n["queried"]]
        assert sorted(s.answers) == sorted(n["value"] for n in queried)
        assert len(s.answers) == spec.num_needle_q * spec.num_needle_v
        assert len({n["key"] for n in queried}) == spec.num_needle_q
        keys = [k.strip() for k in re.split(r", and |, ", s.metadata["query"])]
        assert sorted(keys) == sorted({n["key"] for n in queried})
        assert sum(n["target"] for n in needles) == 1
        # answers appear only in their needles (a distractor never carries a queried key)
        for a in s.answers:
            assert s.prompt.count(a) == 1


def test_well_formedness_checks_can_fail():
    rng = random.Random(0)
    assert is_well_formed("uuids", random_uuid(rng))
    assert is_well_formed("numbers", random_number(rng))
    for kind, bad in [("numbers", "0123456"), ("numbers", "123456"), ("words", "Red-fox"),
                      ("uuids", "0f4e2d1c-0000-1000-8000-000000000000")]:
        assert not is_well_formed(kind, bad)


def test_haystacks(tokenizer, samples):
    ctx = lambda s: s.prompt.split("\n", 1)[1].rsplit("\n", 1)[0]  # noqa: E731
    s = samples["single_1"][1]
    lines = [ln for ln in ctx(s).split("\n") if not ln.startswith("One of the special")]
    assert lines and all(NOISE.startswith(ln) for ln in lines) and lines[0] == NOISE
    s = samples["multikey_2"][0]
    lines = ctx(s).split("\n")
    assert len(lines) > 10
    assert all(re.fullmatch(r"One of the special magic numbers for [a-z]+-[a-z]+ is: "
                            r"[1-9]\d{6}\.", ln) for ln in lines)
    assert len({ln.split(" for ")[1].split(" is")[0] for ln in lines}) > 0.9 * len(lines)
    s = samples["multikey_3"][0]
    assert all(re.fullmatch(r"One of the special magic uuids for [0-9a-f-]{36} is: "
                            r"[0-9a-f-]{36}\.", ln) for ln in ctx(s).split("\n"))
    # essays: the held-out plays, whitespace collapsed (RULER), needles between sentences
    s = samples["single_2"][1]
    text = ctx(s)
    assert "\n" not in text and "  " not in text
    plays = re.sub(r"\s+", " ", " ".join(embedded_corpus("test")))
    needle = next(n for n in s.metadata["needles"])
    before, after = text.split(f" One of the special magic numbers for {needle['key']}", 1)
    assert before[-1] in ".!?]'\"" and before[-60:] in plays
    assert after.split(". ", 1)[1][:60] in plays


def test_essay_from_a_local_file(tokenizer, tmp_path):
    path = tmp_path / "essay.txt"
    path.write_text("Zebras graze on the plain. Lions sleep in the shade!\n\nIs it noon? " * 50)
    s = NiahTask("single_2", essay_source=str(path)).sample(tokenizer, length=600, depth=50)
    assert "Zebras graze" in s.prompt and "Macbeth" not in s.prompt
    assert NiahTask("single_2", essay_source=str(path)).config()["essay_source"] == str(path)
    with pytest.raises(ValueError, match="not found"):
        NiahTask("single_2", essay_source=str(tmp_path / "none")).sample(tokenizer, length=600)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [512, 3000, 8192])
def test_prompt_has_the_requested_length(tokenizer, variant, length):
    task = NiahTask(variant, gen_tokens=32)
    target = length - 32
    for depth in (0, 33, 100):
        s = task.sample(tokenizer, length=length, depth=depth, seed=1)
        n = len(s.prompt_ids)
        assert list(s.prompt_ids) == tokenizer.tokenize(s.prompt)
        assert s.metadata["prompt_tokens"] == n and s.metadata["target_tokens"] == target
        assert target - s.metadata["tolerance"] <= n <= target, (n, target, s.metadata["tolerance"])
        # the stated tolerance is one haystack unit: a word, a noise sentence, a distractor line
        bound = {"noise": 16, "essay": 24, "needle": 120}[s.metadata["haystack"]]
        assert s.metadata["tolerance"] <= bound


def test_length_too_short_is_refused(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        NiahTask("multikey_3").sample(tokenizer, length=300)
    with pytest.raises(ValueError, match="no room"):
        NiahTask("single_1").sample(tokenizer, length=100)
    with pytest.raises(ValueError):
        NiahTask("single_1").sample(tokenizer, length=1000, depth=101)


@pytest.mark.parametrize("variant", VARIANTS)
def test_needle_is_at_the_requested_depth(tokenizer, variant):
    task = NiahTask(variant)
    starts = []
    for depth in (0, 10, 25, 50, 75, 90, 100):
        s = task.sample(tokenizer, length=4096, depth=depth, seed=2)
        m = s.metadata
        tgt = next(n for n in m["needles"] if n["target"])
        ids = list(s.prompt_ids)
        # the token span holds the needle, and the context span the haystack
        needle = tokenizer.detokenize(ids[tgt["start"]:tgt["end"]])
        assert needle.strip().startswith("One of the special magic")
        assert needle.strip().endswith(f"{tgt['value']}.") and tgt["value"] in s.answers
        assert tokenizer.detokenize(ids[:m["context_start"]]).endswith("afterwards.\n")
        assert tokenizer.detokenize(ids[m["context_end"]:]).startswith("\nWhat ")
        span = m["context_end"] - m["context_start"] - (tgt["end"] - tgt["start"])
        want = m["context_start"] + depth / 100 * span
        assert abs(tgt["start"] - want) <= m["depth_bound_tokens"], (depth, tgt["start"], want)
        assert m["depth"] == depth
        assert abs(m["depth_actual"] - depth) <= 100 * m["depth_bound_tokens"] / span
        assert m["distance"] == len(ids) - tgt["start"]
        starts.append(tgt["start"])
    assert starts == sorted(starts) and starts[0] == m["context_start"]


def test_other_needles_spread_and_depth_none_is_drawn(tokenizer):
    s = NiahTask("multikey_1").sample(tokenizer, length=4096, depth=50, seed=0)
    depths = sorted(n["depth"] for n in s.metadata["needles"])
    assert len(set(round(d) for d in depths)) == 4
    s = NiahTask("single_1").sample(tokenizer, length=2048, seed=0)
    assert s.metadata["depth"] in RULER_DEPTHS


def test_same_seed_same_prompts_other_seed_other_prompts(tokenizer):
    for variant in ("single_1", "single_2", "multikey_3"):
        task = NiahTask(variant)
        a = task.sample(tokenizer, length=1500, depth=40, seed=7, index=3)
        b = NiahTask(variant).sample(tokenizer, length=1500, depth=40, seed=7, index=3)
        assert a.to_dict() == b.to_dict()
        assert a == type(a).from_dict(json.loads(json.dumps(a.to_dict(), allow_nan=False)))
        c = task.sample(tokenizer, length=1500, depth=40, seed=8, index=3)
        d = task.sample(tokenizer, length=1500, depth=40, seed=7, index=4)
        assert c.prompt != a.prompt and d.prompt != a.prompt and c.answers != a.answers
    grid = [s.prompt for s in NiahTask("single_1").grid(tokenizer, lengths=[600], num_samples=2)]
    assert len(grid) == 22 and len(set(grid)) == 22


def test_string_match_metrics_are_rulers():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all(" 123, 999", ["123", "456"]) == 0.5
    assert string_match_all("ABC-def", ["abc-DEF"]) == 1.0  # case-insensitive
    assert string_match_all("", ["1"]) == 0.0
    assert string_match_all("\x00 42 \x1f", ["42"]) == 1.0
    assert string_match_part(" 123, 999", ["123", "456"]) == 1.0
    assert string_match_part(" 999", ["123", "456"]) == 0.0


class _Models:
    """Stand-ins for a model's greedy continuation of a sample's prompt."""

    @staticmethod
    def oracle(s, rng):
        return " " + ", ".join(s.answers) + ".\nThe grass is green."

    @staticmethod
    def silent(s, rng):
        return ""

    @staticmethod
    def babbler(s, rng):  # haystack-like text: cannot recall
        return " " + NOISE

    @staticmethod
    def guesser(s, rng):  # well-formed guesses of the right type
        kind = NIAH_VARIANTS[s.metadata["variant"]].type_needle_v
        return " " + ", ".join(random_uuid(rng) if kind == "uuids" else random_number(rng)
                               for _ in s.answers) + "."

    @staticmethod
    def first_key_only(s, rng):  # recalls one value only
        return " " + s.answers[0] + "."


@pytest.mark.parametrize("variant", VARIANTS)
def test_oracle_scores_100_and_models_that_cannot_recall_about_0(tokenizer, variant):
    task = get_task(f"niah_{variant}", gen_tokens=16)
    samples = list(task.grid(tokenizer, lengths=[700, 1400], depths=[0, 50, 100], num_samples=2))
    rng = random.Random(0)
    mean = {name: accuracy_grid([task.record(s, getattr(_Models, name)(s, rng))
                                 for s in samples])["mean"]
            for name in ("oracle", "silent", "babbler", "guesser", "first_key_only")}
    assert mean["oracle"] == 100.0
    assert mean["silent"] == mean["babbler"] == 0.0
    assert mean["guesser"] <= 1.0
    n = len(samples[0].answers)
    assert mean["first_key_only"] == pytest.approx(100.0 / n)


def test_grid_orientation_with_a_model_that_recalls_only_deep_needles(tokenizer):
    task = NiahTask("single_1", gen_tokens=8)
    records = [task.record(s, " " + s.answers[0] if s.depth >= 50 else " 0")
               for s in task.grid(tokenizer, lengths=[400, 800], depths=[0, 25, 50, 75, 100])]
    g = accuracy_grid(records)
    assert g["lengths"] == [400, 800] and g["depths"] == [0, 25, 50, 75, 100]
    assert g["matrix"] == [[0.0, 0.0], [0.0, 0.0], [100.0, 100.0], [100.0, 100.0], [100.0, 100.0]]
    assert g["mean"] == 60.0 and g["by_length"] == {"400": 60.0, "800": 60.0}
