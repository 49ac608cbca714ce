"""lm-evaluation-harness on a Hugging Face export (swax_megatron/eval/lm_eval_adapter.py), offline:
a tiny local multiple-choice task (tests/eval/data/lm_eval/tiny_mc.jsonl, `dataset_path: json`)
on a tiny random SwaxForCausalLM saved with save_pretrained (loaded back through trust_remote_code)
and a tokenizer trained on the embedded corpus. Metrics in [0, 1], the results file in the
harness' format, skipped when present and redone when the local task changes; two forced tasks
(one choice: accuracy 100; two equal choices with the second gold: accuracy 0) check that the
score can reach both ends."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from swax_megatron.eval.lm_eval_adapter import OFFLINE_ENV  # noqa: E402  (imports no HF library)

os.environ.update(OFFLINE_ENV)  # before transformers / lm_eval / datasets are imported

pytest.importorskip("transformers", reason="lm_eval tests need the hf extra: pip install -c constraints/cpu.txt -e '.[hf,eval]'")
pytest.importorskip("lm_eval", reason="lm_eval tests need the eval extra: pip install -c constraints/cpu.txt -e '.[eval]'")
pytest.importorskip("accelerate", reason="lm_eval's HFLM needs its hf extra: pip install -c constraints/cpu.txt -e '.[eval]'")

DATA = Path(__file__).resolve().parent / "data" / "lm_eval" / "tiny_mc.jsonl"
N = sum(1 for line in DATA.read_text().splitlines() if line.strip())

TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: {choice}
doc_to_target: {target}
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_tasks(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    specs = {"swax_tiny_mc": ("choices", "answer"),
             # one choice, the gold one: every model scores 100
             "swax_tiny_forced": ("\"{{[choices[answer]]}}\"", "0"),
             # two equal choices, the second gold: ties go to the first, every model scores 0
             "swax_tiny_tied": ("\"{{[choices[0], choices[0]]}}\"", "1")}
    for name, (choice, target) in specs.items():
        (root / f"{name}.yaml").write_text(TASK.format(name=name, data=DATA, choice=choice, target=target))
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny random SwaxForCausalLM with remote code and its tokenizer, as an export directory."""
    import torch

    from swax_megatron.data.embedded import embedded_corpus
    from swax_megatron.data.tokenizer import train_tokenizer
    from swax_megatron.hf import SwaxForCausalLM, SwaxHFConfig
    from swax_megatron.hf.hf_tokenizer import hf_tokenizer_from_sentencepiece, token_ids

    root = tmp_path_factory.mktemp("lm_eval_export")
    sp = train_tokenizer(embedded_corpus("train")[:3], root / "tok", 512, num_threads=1)
    ids = token_ids(sp.model_path)
    config = SwaxHFConfig(vocab_size=512, hidden_size=32, intermediate_size=48,
                          layer_types=["mlstm", "sliding_attention"], num_attention_heads=4,
                          num_key_value_heads=2, sliding_window=16, mlstm_num_heads=2, mlstm_qk_head_dim=8,
                          mlstm_v_head_dim=16, mlstm_chunk_size=4, mlstm_kernel="plain",
                          pad_token_id=ids["pad"] if ids["pad"] is not None else ids["eos"],
                          eos_token_id=ids["eos"], bos_token_id=ids["bos"])
    torch.manual_seed(0)
    model = SwaxForCausalLM(config).eval()
    out = root / "export"
    model.save_pretrained(out)
    hf_tokenizer_from_sentencepiece(sp.model_path).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def evaluated(export, tmp_path_factory):
    from swax_megatron.eval.lm_eval_adapter import evaluate_lm_eval

    tasks = write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))
    results = tmp_path_factory.mktemp("lm_eval_results")
    out = evaluate_lm_eval(export, ["swax_tiny_mc", "swax_tiny_forced", "swax_tiny_tied"], include_path=tasks,
                           results_dir=results, batch_size=4, max_length=128, progress=False)
    return out, tasks, results


def test_metrics_are_accuracies_and_the_file_has_the_harness_format(evaluated, export):
    from swax_megatron.eval.report_data import read_result

    out, _, results = evaluated
    r = out["swax_tiny_mc"]
    assert not r.skipped
    assert set(r.metrics) >= {"acc", "acc_norm"}
    for name in ("acc", "acc_norm"):
        assert 0.0 <= r.metrics[name] <= 1.0
        assert (r.metrics[name] * N) == pytest.approx(round(r.metrics[name] * N))  # k of N right
    assert r.score == pytest.approx(100 * r.metrics["acc"])
    print(f"\nrandom export: {r.metrics}")
    assert r.path.parent == results and r.path.name.startswith("lm_eval-swax_tiny_mc-w16-")
    data = json.loads(r.path.read_text())
    assert data["format"] == 1 and data["kind"] == "lm_eval" and data["task"] == "lm_eval:swax_tiny_mc"
    assert data["window"] == 16 and data["checkpoint"]["path"] == str(export)
    assert data["checkpoint"]["step"] is None  # not a converted checkpoint: no swax_export.json
    assert data["settings_hash"][:8] in r.path.name and data["samples"] == N
    assert data["metrics"] == r.metrics and data["score"] == r.score
    parsed, why = read_result(r.path)  # what the report reads
    assert why is None and parsed.kind == "lm_eval" and parsed.score == pytest.approx(r.score)
    assert parsed.metrics["acc"] == r.metrics["acc"]


def test_forced_tasks_reach_both_ends(evaluated):
    out, _, _ = evaluated
    assert out["swax_tiny_forced"].metrics["acc"] == 1.0 and out["swax_tiny_forced"].score == 100.0
    assert out["swax_tiny_tied"].metrics["acc"] == 0.0 and out["swax_tiny_tied"].score == 0.0


def test_done_results_are_skipped_and_a_changed_task_is_redone(evaluated, export):
    from swax_megatron.eval.lm_eval_adapter import evaluate_lm_eval

    out, tasks, results = evaluated
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    again = evaluate_lm_eval(export, ["swax_tiny_mc", "swax_tiny_forced"], include_path=tasks,
                             results_dir=results, batch_size=4, max_length=128, progress=False)
    assert all(r.skipped for r in again.values())
    assert again["swax_tiny_mc"].metrics == out["swax_tiny_mc"].metrics
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before

    # Editing a local task file changes the settings hash: a new file, evaluated again.
    yaml = tasks / "swax_tiny_forced.yaml"
    yaml.write_text(yaml.read_text() + "# edited\n")
    redo = evaluate_lm_eval(export, ["swax_tiny_forced"], include_path=tasks, results_dir=results,
                            batch_size=4, max_length=128, progress=False)
    assert not redo["swax_tiny_forced"].skipped and redo["swax_tiny_forced"].path.name not in before
    assert redo["swax_tiny_forced"].score == 100.0


def test_bad_inputs_are_eval_errors(export, tmp_path):
    from swax_megatron.eval.harness import EvalError
    from swax_megatron.eval.lm_eval_adapter import evaluate_lm_eval

    with pytest.raises(EvalError, match="no such"):
        evaluate_lm_eval(tmp_path / "nothing", ["swax_tiny_mc"], progress=False)
    with pytest.raises(EvalError, match="include path"):
        evaluate_lm_eval(export, ["swax_tiny_mc"], include_path=tmp_path / "nope", progress=False)
    with pytest.raises(EvalError, match="unknown lm_eval task"):
        evaluate_lm_eval(export, ["swax_no_such_task"], include_path=write_tasks(tmp_path / "t"),
                         results_dir=tmp_path / "r", progress=False)


def test_a_run_directory_is_exported_first(tmp_path_factory):
    """A real tiny training run (forked swax-train, 4 steps): exported to a temporary directory
    with export_to_hf, evaluated, the file in RUN_DIR/eval with the checkpoint step and the run's
    window, read by the report like the harness' files."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from forkrun import tiny_trained_run

    from swax_megatron.eval.lm_eval_adapter import evaluate_lm_eval
    from swax_megatron.eval.report_data import read_results

    root = tmp_path_factory.mktemp("lm_eval_run")
    run = tiny_trained_run(root)
    tasks = write_tasks(root / "tasks")
    out = evaluate_lm_eval(run, ["swax_tiny_mc"], include_path=tasks, max_length=128, progress=False)
    r = out["swax_tiny_mc"]
    assert r.path.parent == run / "eval" and 0.0 <= r.metrics["acc"] <= 1.0
    data = json.loads(r.path.read_text())
    assert data["checkpoint"]["step"] == 4 and data["window"] == 64 and data["kind"] == "lm_eval"
    assert Path(data["checkpoint"]["path"]).is_relative_to(run)
    print(f"\nrun {run.name}: acc {r.metrics['acc']}, acc_norm {r.metrics['acc_norm']}, {data['checkpoint']}")
    latest, _, notes = read_results(run)
    assert [(x.task, x.kind, x.step) for x in latest] == [("lm_eval:swax_tiny_mc", "lm_eval", 4)], notes
    assert not list(run.parent.glob("export*")) and not (run / "export").exists()
    again = evaluate_lm_eval(run, ["swax_tiny_mc"], include_path=tasks, max_length=128, progress=False)
    assert again["swax_tiny_mc"].skipped


def test_swax_eval_lm_eval_on_the_command_line(evaluated, export, tmp_path, capsys):
    # `swax eval DIR --lm-eval TASKS --lm-eval-include DIR`: lm-eval only, the results file printed.
    import shutil

    from swax_megatron.cli import main

    _, tasks, _ = evaluated
    target = tmp_path / "export"
    shutil.copytree(export, target)
    assert main(["eval", str(target), "--lm-eval", "swax_tiny_forced",
                 "--lm-eval-include", str(tasks)]) == 0
    (printed,) = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    data = json.loads(Path(printed).read_text())
    assert data["task"] == "lm_eval:swax_tiny_forced" and data["score"] == 100.0
    assert main(["eval", str(target), "--lm-eval", " , "]) == 2
    assert "--lm-eval names no task" in capsys.readouterr().err
