"""lm_eval's RULER `niah_single_1` on a real tiny run, offline, as a cross-check of our own NIAH
(swax_megatron/eval/niah.py, the harness) on the same export and lengths.

- `swax eval RUN --lm-eval niah_single_1`: lengths from the run's eval.lengths, eval.samples x
  len(eval.depths) samples per length, one score per length in the results file, skipped when
  done; an essay variant (needs a download) fails offline as one line.
- The prompts agree in structure: the same template (first and question lines), the same needle
  sentence and kind (a words key, a 7-digit value), the same noise haystack sentence, the same
  answer prefix; the value is in the prompt and is the answer.
- Both score the tiny model the same (slow): a 4-step model recalls nothing through either.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from swax_megatron.eval.lm_eval_adapter import OFFLINE_ENV  # noqa: E402  (imports no HF library)

os.environ.update(OFFLINE_ENV)  # before transformers / lm_eval / datasets are imported

pytest.importorskip("transformers", reason="needs the hf extra: pip install -c constraints/cpu.txt -e '.[hf,eval]'")
pytest.importorskip("lm_eval", reason="needs the eval extra: pip install -c constraints/cpu.txt -e '.[eval]'")
pytest.importorskip("wonderwords", reason="lm_eval's RULER needs wonderwords (the eval extra)")

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "training"))

from forkrun import tiny_trained_run  # noqa: E402

LENGTHS = [512, 1024]  # RULER's prompt + 128 generated tokens must fit the smallest
EVAL = [f"eval.lengths={LENGTHS}", "eval.samples=1", "eval.depths=[50]", "eval.batch_size=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real tiny run (4 steps), its recipe's eval section set to LENGTHS, 1 sample per length."""
    return tiny_trained_run(tmp_path_factory.mktemp("ruler_run"), extra=EVAL)


@pytest.fixture(scope="module")
def lm_eval_result(run):
    from swax_megatron.cli import main

    code = main(["eval", str(run), "--lm-eval", "niah_single_1"])
    assert code == 0
    (path,) = sorted((run / "eval").glob("lm_eval-niah_single_1-*.json"))
    return json.loads(path.read_text())


def test_lm_eval_niah_single_1_scores_each_length_offline(run, lm_eval_result, capsys):
    from swax_megatron.eval.lm_eval_adapter import evaluate_lm_eval

    data = lm_eval_result
    assert data["task"] == "lm_eval:niah_single_1" and data["kind"] == "lm_eval"
    assert data["checkpoint"]["step"] == 4 and data["window"] == 64
    assert data["settings"]["lengths"] == LENGTHS and data["settings"]["samples_per_length"] == 1
    assert sorted(data["metrics"], key=int) == [str(n) for n in LENGTHS]
    assert data["samples"] == {str(n): 1 for n in LENGTHS}
    for n in LENGTHS:
        assert 0.0 <= data["metrics"][str(n)] <= 1.0
        assert data["lengths"][str(n)] == 100.0 * data["metrics"][str(n)]
    assert data["score"] == pytest.approx(sum(data["lengths"].values()) / len(LENGTHS))
    again = evaluate_lm_eval(run, ["niah_single_1"], progress=False)
    assert again["niah_single_1"].skipped


def test_an_essay_variant_fails_offline_as_one_line(run, lm_eval_result, capsys):
    from swax_megatron.cli import main

    capsys.readouterr()
    assert main(["eval", str(run), "--lm-eval", "niah_single_2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "niah_single_2" in err[0] and "offline" in err[0], err


NEEDLE_RE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def _structure(prompt: str, answer_prefix: str) -> dict:
    lines = prompt.split("\n")
    needles = NEEDLE_RE.findall(prompt)
    assert len(needles) == 1, prompt[:300]
    key, value = needles[0]
    return {"first": lines[0], "question": lines[-1].replace(key, "KEY"),
            "prefix": answer_prefix.strip().replace(key, "KEY"), "noise": NOISE in prompt,
            "key_kind": "words", "value_digits": len(value), "key": key, "value": value}


@pytest.fixture(scope="module")
def export(run, tmp_path_factory):
    from swax_megatron.hf.convert import export_to_hf

    out = tmp_path_factory.mktemp("ruler_export") / "export"
    export_to_hf(run, out, report=lambda s: None)
    return out


def test_prompts_agree_in_structure(export):
    from lm_eval.tasks.ruler.niah_utils import niah_single_1
    from transformers import AutoTokenizer

    from swax_megatron.eval import get_task
    from swax_megatron.eval.harness import TaskTokenizer

    theirs = niah_single_1(max_seq_lengths=[LENGTHS[0]], tokenizer=str(export))["test"][0]
    their = _structure(theirs["input"], theirs["gen_prefix"])
    assert theirs["outputs"] == [their["value"]]

    tok = TaskTokenizer(type("T", (), {"hf": AutoTokenizer.from_pretrained(export), "fingerprint": None})())
    ours_sample = get_task("niah_single_1").sample(tok, length=LENGTHS[0], depth=50.0)
    cut = ours_sample.prompt.rindex(" The special magic")
    ours = _structure(ours_sample.prompt[:cut], ours_sample.prompt[cut:])
    assert list(ours_sample.answers) == [ours["value"]]
    for k in ("first", "question", "prefix", "noise", "key_kind", "value_digits"):
        assert ours[k] == their[k], (k, ours[k], their[k])
    assert their["prefix"] == "The special magic number for KEY mentioned in the provided text is"

    # Both leave room for the 128 generated tokens. Ours fills the rest to within the haystack's
    # tolerance; RULER grows its haystack 5 noise paragraphs at a time below 4096 tokens (25 from
    # 4096 on), and backs off one step, so its prompt may be up to 2 steps shorter (the answer
    # prefix not counted): at 512, ~210 tokens against our ~380.
    hf = AutoTokenizer.from_pretrained(export)
    their_tokens = len(hf(theirs["input"])["input_ids"])
    paragraph = len(hf("\n" + NOISE, add_special_tokens=False)["input_ids"])
    assert LENGTHS[0] - 128 - 2 * 5 * paragraph <= their_tokens <= LENGTHS[0] - 128
    assert LENGTHS[0] - 128 - ours_sample.metadata["tolerance"] <= len(ours_sample.prompt_ids) <= LENGTHS[0] - 128


@pytest.mark.slow
def test_scores_agree_within_noise(run, lm_eval_result):
    """The same tiny model through both paths, the same lengths and samples per length (slow:
    128 generated tokens per prompt through each path)."""
    from swax_megatron.eval.harness import evaluate_run

    (path,) = evaluate_run(run, tasks=["niah_single_1"], progress=False)
    mine = json.loads(path.read_text())
    assert mine["settings"]["lengths"] == LENGTHS and len(mine["records"]) == len(LENGTHS)
    print(f"\nniah_single_1 on {run.name}: ours {mine['score']:.1f}%, lm_eval {lm_eval_result['score']:.1f}% "
          f"(per length {lm_eval_result['lengths']})")
    # one sample per length: a 4-step model recalls no 7-digit number through either path
    assert mine["score"] == lm_eval_result["score"] == 0.0
