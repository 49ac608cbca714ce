"""tools/summarize.py and swax_megatron.eval.report on a fixture of synthetic run directories:
a 3-entry window sweep (fixed 32 and 128 written, 64 never run), a stochastic SWAX run and an
unfinished transformer without evaluation results. The resolved.yaml files are real recipes
resolved; metrics, summaries and evaluation results are written here with known numbers, so the
tables are checked cell by cell. The HTML test renders the page in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swax_megatron.config.resolve import resolve, resolve_sweep
from swax_megatron.eval.report import fmt_count, write_report
from swax_megatron.eval.results import accuracy_grid, distance_buckets

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "summarize.py"
PNG = b"\x89PNG\r\n\x1a\n"

# -- the fixture ---------------------------------------------------------------------------------

# (length, depth) -> score of one record; lengths 256 and 1024, depths 0 / 50 / 100
NIAH = {
    # fixed 32: at eval window 32 two tasks, at 128 one
    ("w32", 32, "niah_single_1"): {256: [1, 1, 1], 1024: [1, 0, 0.5]},        # 100, 50 -> 75
    ("w32", 32, "niah_multikey_1"): {256: [1, 0.6, 0.8], 1024: [0.2, 0.2, 0.2]},  # 80, 20 -> 50
    ("w32", 128, "niah_single_1"): {256: [1, 1, 1], 1024: [1, 1, 0]},         # 100, 66.7 -> 83.3
    # fixed 128
    ("w128", 128, "niah_single_1"): {256: [1, 1, 1], 1024: [0, 0, 0.5]},      # 100, 16.7 -> 58.3
    ("w128", 128, "niah_multikey_1"): {256: [1, 1, 1], 1024: [0, 0, 0]},      # 100, 0 -> 50
    ("w128", 32, "niah_single_1"): {256: [1, 0, 1], 1024: [0, 0, 0]},         # 66.7, 0 -> 33.3
    # stochastic 32/128
    ("stoch", 128, "niah_single_1"): {256: [1, 1, 1], 1024: [1, 0.5, 1]},     # 100, 83.3 -> 91.7
}
# mqar probes: (distance, score) per record; edges 0 / 64 / 128 / 256
PROBES = {
    ("w32", 128): [(10, 1), (40, 1), (70, 1), (100, 0), (150, 0), (250, 0)],   # 100 50 0 -> 50
    ("w128", 128): [(10, 1), (40, 1), (70, 1), (100, 1), (150, 1), (250, 0)],  # 100 100 50 -> 83.3
}
LM_EVAL = {"w32": {"tiny_mc": 40.0, "tiny_mc2": 30.0},     # avg 35
           "w128": {"tiny_mc": 50.0, "tiny_mc2": 40.0},    # avg 45
           "stoch": {"tiny_mc": 47.5, "tiny_mc2": 42.5}}   # avg 45
PPL = {("w32", 128): [(0, 512, 5.0), (512, 1024, 5.5), (1024, 2048, 6.25)]}
VAL_LOSS = {"w32": 5.1234, "w128": 5.2345, "stoch": 5.0123, "tf": 5.4321}
STEPS = 60
PROBE_CURVE = {"w32": [0.0, 12.5, 87.5], "w128": [0.0, 0.0, 100.0]}  # at steps 20, 40, 60


def _grid(task: str, cells: dict) -> dict:
    recs = [{"task": task, "length": L, "depth": d, "score": float(s)}
            for L, scores in cells.items() for d, s in zip((0.0, 50.0, 100.0), scores)]
    return accuracy_grid(recs)


def _result(run_dir: Path, task: str, kind: str, window: int, *, step=STEPS, score=None,
            extra=None, created="2026-01-02T03:04:05+00:00", tag="abcdef12") -> None:
    name = task.replace(":", "_")
    data = {"format": 1, "task": task, "kind": kind, "window": window,
            "checkpoint": {"path": str(run_dir / "checkpoints" / f"iter_{step:07d}"), "step": step},
            "settings": {"seed": 0}, "settings_hash": tag * 5, "created": created,
            "score": score, **(extra or {})}
    path = run_dir / "eval" / f"{name}-w{window}-{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _training(run_dir: Path, key: str, recipe, *, finished: bool = True, steps: int = STEPS):
    tr = recipe.train
    lines = [{"kind": "attempt", "attempt": 1, "start_step": 0}]
    for s in range(1, steps + 1):
        lines.append({"kind": "train", "step": s, "loss": 7.5 - 2.0 * s / steps - VAL_LOSS[key]
                      + 5.2
                      + 0.1 * ((s * 7919) % 13) / 13, "lr": 1e-3, "window": 32,
                      "consumed_samples": s * tr.global_batch_size, "skipped": False})
        if s % 20 == 0:
            lines.append({"kind": "eval", "step": s, "val_loss": VAL_LOSS[key] + (steps - s) / 100,
                          "window": recipe.model.swa.window})
            if key in PROBE_CURVE:
                lines.append({"kind": "probe", "step": s, "task": "mqar", "samples": 8,
                              "score": PROBE_CURVE[key][s // 20 - 1],
                              "window": recipe.model.swa.window})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({
            "steps": steps, "tokens_trained": steps * tr.global_batch_size * tr.seq_length,
            "val_loss": VAL_LOSS[key], "eval_window": recipe.model.swa.window}))
        (run_dir / "exit.json").write_text(json.dumps({"code": 0, "step": steps, "reason": "done"}))
        (run_dir / "DONE").write_text("finished\n")


def _write_run(resolved, key: str, *, finished: bool = True, steps: int = STEPS) -> Path:
    run_dir = Path(resolved.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "resolved.yaml").write_text(resolved.to_yaml())
    _training(run_dir, key, resolved.recipe, finished=finished, steps=steps)
    for (k, w, task), cells in NIAH.items():
        if k == key:
            g = _grid(task, cells)
            _result(run_dir, task, "generation", w, score=g["mean"], extra={"grid": g})
    for (k, w), recs in PROBES.items():
        if k == key:
            b = distance_buckets([{"distance": d, "score": float(s)} for d, s in recs],
                                 edges=[0, 64, 128, 256])
            _result(run_dir, "mqar", "probes", w, score=100 * sum(s for _, s in recs) / len(recs),
                    extra={"buckets": b})
    for name, score in LM_EVAL.get(key, {}).items():
        _result(run_dir, f"lm_eval:{name}", "lm_eval", resolved.recipe.model.swa.window,
                score=score, extra={"metrics": {"acc": score / 100}})
    for (k, w), buckets in PPL.items():
        if k == key:
            _result(run_dir, "ppl_by_position", "ppl_by_position", w, extra={"ppl": {
                "train_length": resolved.recipe.train.seq_length,
                "buckets": [{"start": a, "end": b, "loss": loss, "tokens": 4096}
                            for a, b, loss in buckets]}})
    return run_dir


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    sweep = root / "sweep.yaml"
    sweep.write_text(f"base: {REPO / 'recipes' / 'tiny' / 'window_sweep.yaml'}\n"
                     f"run:\n  output_root: {root / 'runs'}\n")
    entries = resolve_sweep(str(sweep))
    assert [e.recipe.train.window_schedule.long for e in entries] == [32, 64, 128]
    w32 = _write_run(entries[0], "w32")
    w128 = _write_run(entries[2], "w128")
    # an older result of w128's niah_single_1 at window 128 (an earlier checkpoint): superseded
    _result(w128, "niah_single_1", "generation", 128, step=20, score=1.0, tag="0ld0ld00",
            extra={"grid": _grid("niah_single_1", {256: [0, 0, 0], 1024: [0, 0, 0.03]})})
    (w128 / "eval" / "broken-w128-12345678.json").write_text("{not json")
    over = [f"run.output_root={root / 'runs'}", f"train.steps={STEPS}"]
    stoch = _write_run(resolve(str(REPO / "recipes/tiny/swax.yaml"), over), "stoch")
    tf = _write_run(resolve(str(REPO / "recipes/tiny/transformer.yaml"), over), "tf",
                    finished=False, steps=30)
    out = root / "report"
    res = write_report([str(sweep), str(stoch), str(tf)], out)
    return {"root": root, "sweep": sweep, "entries": entries, "out": out, "result": res,
            "md": res.markdown.read_text(), "runs": {"w32": w32, "w128": w128, "stoch": stoch,
                                                   "tf": tf}}


def _table(md: str, first_header: str) -> list[dict]:
    """The markdown table whose header row starts with `first_header` cells, as dicts."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:len(first_header)] == first_header:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(cells, [c.strip() for c in row.strip().strip("|")
                                             .split("|")])))
            return rows
    raise AssertionError(f"no table starting {first_header} in:\n{md}")


def _params(resolved) -> str:
    import torch

    from swax_megatron.models.reference import (ReferenceConfig, SwaxReference,
                                                parameter_breakdown)

    cfg = ReferenceConfig.from_model_config(resolved.recipe.model,
                                            vocab_size=resolved.recipe.data.tokenizer_vocab_size)
    with torch.device("meta"):
        return fmt_count(parameter_breakdown(SwaxReference(cfg))["total"])


# -- tables --------------------------------------------------------------------------------------

def test_runs_table(ablation):
    md, entries = ablation["md"], ablation["entries"]
    rows = {r["run"]: r for r in _table(md, ["run", "window schedule"])}
    w32, w128 = entries[0].recipe.run.name, entries[2].recipe.run.name
    assert list(rows) == [w32, w128, "tiny-swax", "tiny-transformer"]  # the input's order
    tokens = fmt_count(STEPS * 8 * 512)
    assert tokens == "246k"
    assert rows[w32] == {
        "run": w32, "window schedule": "fixed 32", "params": _params(entries[0]),
        "training tokens": tokens, "final val loss": "5.1234", "eval window": "128",
        "NIAH avg (%)": "83.3", "recall avg (%)": "50.0", "short-context avg (%)": "35.0",
        "status": "done"}
    assert rows[w128]["window schedule"] == "fixed 128"
    assert (rows[w128]["NIAH avg (%)"], rows[w128]["recall avg (%)"],
            rows[w128]["short-context avg (%)"]) == ("54.2", "83.3", "45.0")  # not the old 1.0
    s = rows["tiny-swax"]
    assert s["window schedule"] == "stochastic 32/128 p=0.5, last 10% at 128"
    assert (s["NIAH avg (%)"], s["recall avg (%)"], s["final val loss"]) == ("91.7", "—", "5.0123")
    t = rows["tiny-transformer"]
    assert t["window schedule"] == "none (no S layers)"
    assert t["params"] == _params(resolve(str(REPO / "recipes/tiny/transformer.yaml")))
    assert t["params"] != rows[w32]["params"]
    # unfinished: tokens from the last train record, val loss from the last eval record
    assert t["training tokens"] == fmt_count(30 * 8 * 512) == "123k"
    assert t["final val loss"] == f"{VAL_LOSS['tf'] + (30 - 20) / 100:.4f}"
    assert t["NIAH avg (%)"] == "—" and t["status"] == "incomplete: step 30 of 60"


def test_detail_tables(ablation):
    md, entries = ablation["md"], ablation["entries"]
    w32, w128 = entries[0].recipe.run.name, entries[2].recipe.run.name
    niah = {(r["run"], r["eval window"]): r for r in _table(md, ["run", "eval window", "256 tokens"])}
    assert set(niah) == {(w32, "32"), (w32, "128"), (w128, "32"), (w128, "128"),
                         ("tiny-swax", "128")}
    # two tasks at w32/32: each task weighs the same
    assert [niah[w32, "32"][k] for k in ("256 tokens", "1k tokens", "avg")] == ["90.0", "35.0", "62.5"]
    assert [niah[w32, "128"][k] for k in ("256 tokens", "1k tokens", "avg")] == ["100.0", "66.7", "83.3"]
    assert [niah[w128, "128"][k] for k in ("256 tokens", "1k tokens", "avg")] == ["100.0", "8.3", "54.2"]
    assert [niah[w128, "32"][k] for k in ("256 tokens", "1k tokens")] == ["66.7", "0.0"]

    recall = {r["run"]: r for r in _table(md, ["run", "eval window", "[0, 64)"])}
    assert [recall[w32][k] for k in ("[0, 64)", "[64, 128)", "[128, 256]", "avg")] == [
        "100.0", "50.0", "0.0", "50.0"]
    assert [recall[w128][k] for k in ("[0, 64)", "[64, 128)", "[128, 256]")] == [
        "100.0", "100.0", "50.0"]

    lm = {r["run"]: r for r in _table(md, ["run", "eval window", "tiny_mc"])}
    assert (lm[w32]["tiny_mc"], lm[w32]["tiny_mc2"], lm[w32]["avg"]) == ("40.0", "30.0", "35.0")
    assert lm["tiny-swax"]["avg"] == "45.0" and lm["tiny-swax"]["eval window"] == "128"

    ppl = _table(md, ["run", "eval window", "training length"])
    assert len(ppl) == 1 and ppl[0]["run"] == w32 and ppl[0]["training length"] == "512"
    assert [ppl[0][k] for k in ("0-512", "512-1k", "1k-2k")] == ["5.0000", "5.5000", "6.2500"]

    runs = {r["run"]: r for r in _table(md, ["run", "directory", "layers"])}
    assert runs[w32]["layers"] == "XS*2" and runs["tiny-transformer"]["layers"] == "G*4"
    assert runs[w128]["results (checkpoint step)"] == f"6 ({STEPS})"
    missing = entries[1].recipe.run.name
    assert runs[missing]["status"] == "no run directory"


def test_missing_and_notes(ablation):
    md, entries, res = ablation["md"], ablation["entries"], ablation["result"]
    missing = entries[1].recipe.run.name
    assert f"- {missing}: no run directory ({entries[1].run_dir})" in md
    assert "- tiny-transformer: no evaluation results" in md
    assert len(res.missing) == 2
    assert "broken-w128-12345678.json: not a readable JSON object" in md
    assert re.search(r"niah_single_1-w128-0ld0ld00\.json` superseded .* step 20\)", md)
    # the one-screen part comes before the rule; the details after it
    top, details = md.split("\n---\n", 1)
    assert "| run | window schedule |" in top and "![loss curves](figures/loss_curves.png)" in top
    assert "### NIAH average by context length" in details and "### Runs" in details


# -- figures -------------------------------------------------------------------------------------

def _img(path: Path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG
    return matplotlib.image.imread(path)[..., :3]


def test_figures(ablation):
    out, md, res = ablation["out"], ablation["md"], ablation["result"]
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert names == sorted(p.name for p in res.figures)
    referenced = re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\)", md)
    assert sorted(referenced) == names  # every figure shown, every link a file
    for must in ("loss_curves.png", "niah_by_length.png", "window_grid_niah.png",
                 "scores_by_train_window.png", "more_scores_by_train_window.png", "ppl_by_position.png", "window_grid_recall.png",
                 "recall_mqar_w128.png", "recall_during_training.png"):
        assert must in names, names
    heatmaps = [n for n in names if n.startswith("niah_heatmap_")]
    assert len(heatmaps) == 5  # (run, eval window) pairs with generation results
    for name in names:
        img = _img(out / "figures" / name)
        assert img.shape[0] >= 200 and img.shape[1] >= 250, (name, img.shape)
        assert img.std() > 0.05, name  # not blank
    # the train x eval window grid: a 3 x 2 heatmap (rows 32, 128, 32/128 p=0.5) with high
    # (green: 83, 92) and low (orange: 33) cells and the stochastic run's window-32 cell grey
    grid = _img(out / "figures" / "window_grid_niah.png")
    red = (grid[..., 0] > 0.9) & (grid[..., 1] < 0.8) & (grid[..., 2] < 0.5)
    green = (grid[..., 1] > 0.35) & (grid[..., 0] < 0.4) & (grid[..., 1] > grid[..., 2])
    grey = (np.abs(grid[..., 0] - 0.816) < 0.01) & (np.abs(grid[..., 1] - 0.816) < 0.01)
    assert red.sum() > 300 and green.sum() > 300 and grey.sum() > 300
    # loss curves: one colour (tab10's first four) per run with a training history
    loss = _img(out / "figures" / "loss_curves.png")
    import matplotlib

    for i in range(4):
        c = np.array(matplotlib.colormaps["tab10"](i)[:3])
        assert (np.abs(loss - c).max(-1) < 0.04).sum() > 200, i


def test_figure_labels(ablation):
    """Axis labels with units, read off the figures the report draws."""
    from swax_megatron.eval import report_plots as plots
    from swax_megatron.eval.report_data import collect

    runs = collect([str(ablation["sweep"]), str(ablation["runs"]["stoch"])]).present
    fig = plots.loss_figure(runs)
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == (
        "training tokens", "loss (nats / token)")
    fig = plots.window_grid_figure(runs)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("eval window (tokens)", "training window (tokens)")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["32", "128", "32/128 p=0.5"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "128"]
    # 62.5 is 62.50000000000001 here (0.6 + 0.8 + 0.6 in floats): rounds up
    assert sorted(t.get_text() for t in ax.texts) == sorted(["63", "83", "33", "54", "92"])
    fig = plots.niah_length_figure(runs)
    assert [a.get_xlabel() for a in fig.axes[:2]] == ["context length (tokens)"] * 2
    assert fig.axes[0].get_ylabel() == "accuracy (%)"
    fig = plots.probe_figure([(r.label, [r]) for r in runs])
    panels = [a for a in fig.axes if a.get_visible()]
    assert len(panels) == 2  # the two runs with probe records, one panel each
    assert [a.get_title() for a in panels] == ["XS*2, fixed 32", "XS*2, fixed 128"]
    assert [list(a.lines[0].get_ydata()) for a in panels] == [PROBE_CURVE["w32"], PROBE_CURVE["w128"]]
    assert (panels[0].get_xlabel(), panels[0].get_ylabel()) == ("step", "probe accuracy (%)")
    assert plots.probe_figure([(r.label, [r]) for r in runs if "long=" not in r.label]) is None
    # recall by distance: a panel per configuration, the bucket means (no lengths recorded in
    # the fixture: one line), a dotted line at the eval window's bucket edge
    probed = [r for r in runs if r.results_of("probes")]
    fig = plots.recall_distance_figure([(r.label, [r]) for r in probed], "mqar", 128)
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["XS*2, fixed 32", "XS*2, fixed 128"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["0-64", "64-128", "128-256"]
    means = [{ln.get_label(): list(ln.get_ydata()) for ln in a.lines} for a in panels]
    assert [m["all lengths"] for m in means] == [[100, 50, 0], [100, 100, 50]]
    assert [[list(ln.get_xdata()) for ln in a.lines if ln.get_label() == "eval window"]
            for a in panels] == [[[1.5, 1.5]]] * 2
    assert (panels[0].get_xlabel(), panels[0].get_ylabel()) == ("distance (tokens)", "recall (%)")
    # two runs as one configuration: their mean, and each run faint
    fig = plots.recall_distance_figure([("both", probed)], "mqar", 128)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert [list(ln.get_ydata()) for ln in ax.lines if ln.get_label() == "all lengths"] == \
        [[100, 75, 25]]
    assert len([ln for ln in ax.lines if ln.get_alpha() == 0.3]) == 2
    assert plots.recall_distance_figure([("both", probed)], "passkey", 128) is None
    fig = plots.window_scores_figure(runs)
    assert {a.get_xlabel() for a in fig.axes if a.get_visible()} == {"training window (tokens)"}
    assert len([a for a in fig.axes if a.get_visible()]) == 4  # NIAH, recall, lm-eval, val loss
    import matplotlib.pyplot as plt

    plt.close("all")


# -- inputs --------------------------------------------------------------------------------------

def _tool(*args, cwd=None):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_bad_inputs_one_line(ablation, tmp_path):
    root = ablation["root"]
    not_run = tmp_path / "empty"
    not_run.mkdir()
    bad_recipe = tmp_path / "bad.yaml"
    bad_recipe.write_text("train:\n  stepz: 3\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [([tmp_path / "nope"], "no such file or directory"),
             ([not_run], "not a run directory"),
             ([root / "runs"], "it holds run directories"),
             ([bad_recipe], "not a sweep recipe that resolves"),
             ([a_file], "neither a run directory nor a recipe")]
    for inputs, words in cases:
        p = _tool(*inputs, "--out", tmp_path / "out")
        assert p.returncode == 2, (inputs, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("summarize: error: ") and words in lines[0], p.stderr
        assert not (tmp_path / "out" / "report.md").exists()
    p = _tool(ablation["runs"]["w32"], "--out", a_file)
    assert p.returncode == 2 and "not a directory" in p.stderr


def test_sweep_not_run_yet(tmp_path):
    """No run of the sweep exists: the report lists them all, exit 0."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {REPO / 'recipes' / 'tiny' / 'window_sweep.yaml'}\n"
                     f"run:\n  output_root: {tmp_path / 'runs'}\n")
    p = _tool(sweep, "--out", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "0 of 3 runs found" in md and md.count(": no run directory (") == 3
    assert p.stderr.count("not evaluated:") == 3


# -- the HTML page in a real browser -------------------------------------------------------------

def _chromium():
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium to render the HTML report: apt-get install -y --no-install-recommends "
                "chromium (Debian)")


def _browser(exe, tmp_path, *args):
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_html_self_contained(ablation):
    page = ablation["result"].html.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    srcs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    assert len(srcs) == len(ablation["result"].figures)
    for alt, data in srcs:
        assert base64.b64decode(data)[:8] == PNG
    # the tables carry the same numbers as the markdown
    assert "<td>fixed 32</td>" in page and "<td class=n>83.3</td>" in page


def test_html_renders_in_chromium(ablation, tmp_path):
    exe = _chromium()
    html_path = ablation["result"].html
    page = html_path.read_text()
    # 1. the page as written (its content security policy forbids scripts): a screenshot shows
    # the tables and the figures' colours
    shot = tmp_path / "shot.png"
    p = _browser(exe, tmp_path, "--window-size=1400,2400", f"--screenshot={shot}",
                 html_path.as_uri())
    assert shot.is_file(), p.stderr[-2000:]
    img = _img(shot)
    assert img.shape[:2] == (2400, 1400)
    coloured = (img.max(-1) - img.min(-1)) > 0.3
    assert coloured.sum() > 20_000  # heatmap and line colours: the figures were drawn
    # 2. the same page with a probe script (and without the policy): every image decoded, at
    # the PNG's own size
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
              "document.body.setAttribute('data-probe',JSON.stringify(imgs.map(i=>"
              "[i.complete,i.naturalWidth,i.naturalHeight,i.alt])));"
              "document.body.setAttribute('data-tables',document.querySelectorAll('table')"
              ".length);});</script>")
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
                     .replace("</body>", script + "</body>"))
    p = _browser(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r"data-probe=\"([^\"]*)\"", p.stdout)
    assert m, p.stdout[:500] + p.stderr[-2000:]
    import html as _html

    seen = json.loads(_html.unescape(m.group(1)))
    expected = {}
    for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page):
        raw = base64.b64decode(data)
        expected[_html.unescape(alt)] = (int.from_bytes(raw[16:20], "big"),
                                         int.from_bytes(raw[20:24], "big"))
    assert len(seen) == len(expected) == len(ablation["result"].figures)
    for complete, w, h, alt in seen:
        assert complete and (w, h) == expected[alt], (alt, w, h)
    assert int(re.search(r'data-tables="(\d+)"', p.stdout).group(1)) >= 6


# -- aggregation units ---------------------------------------------------------------------------

def test_merge_grids_weighs_tasks_equally():
    from swax_megatron.eval.report_data import by_length, merge_grids

    a = _grid("niah_single_1", {256: [1, 1, 1], 1024: [1, 0, 0.5]})
    b = accuracy_grid([{"task": "niah_multikey_1", "length": L, "depth": 50.0, "score": s}
                       for L, s in ((1024, 0.2), (1024, 0.4), (4096, 1.0))])
    m = merge_grids([a, b])
    assert m["lengths"] == [256, 1024, 4096] and m["depths"] == [0.0, 50.0, 100.0]
    assert m["matrix"][1] == [100.0, pytest.approx(15.0), 100.0]  # (0 + 30) / 2 at 1k, 50%
    assert m["matrix"][0] == [100.0, 100.0, None]
    assert m["counts"][1] == [1, 3, 1]
    assert by_length(m) == {256: 100.0, 1024: pytest.approx((50 + 30) / 2), 4096: 100.0}
    assert m["mean"] == pytest.approx((75 + 160 / 3) / 2)
    assert merge_grids([a]) is a and merge_grids([]) is None


def test_headline_window_named_when_it_differs(tmp_path):
    """A run's lm-eval results at another window than its NIAH ones: the cell says which."""
    from swax_megatron.eval.report import runs_table
    from swax_megatron.eval.report_data import load_run

    r = resolve(str(REPO / "recipes/tiny/swax.yaml"), [f"run.output_root={tmp_path}"])
    run_dir = Path(r.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "resolved.yaml").write_text(r.to_yaml())
    g = _grid("niah_single_1", {256: [1, 0, 1]})
    _result(run_dir, "niah_single_1", "generation", 128, score=g["mean"], extra={"grid": g})
    _result(run_dir, "lm_eval:tiny_mc", "lm_eval", 2048, score=61.25)
    _result(run_dir, "passkey", "generation", 128, score=None, extra={"grid": _grid(
        "passkey", {256: [1, 1, 1]})})  # score null: the grid's mean counts
    table = runs_table([load_run(run_dir)])
    row = dict(zip(table.header, table.rows[0]))
    assert row["eval window"] == "128" and row["NIAH avg (%)"] == "83.3"  # (66.7 + 100) / 2
    assert row["short-context avg (%)"] == "61.2 (w=2048)"
    assert row["status"] == "not started"


def test_grid_rows_told_apart_by_what_differs():
    """Runs sharing a training window are told apart in the window grid by the parts of their
    sweep names the others with that window do not share, not by the whole (long) name."""
    from pathlib import Path as P

    from swax_megatron.eval.report_data import Run
    from swax_megatron.eval.report_plots import _grid_row_labels

    names = ["repro__layer_pattern=XS_2__long=16__seed=1", "repro__layer_pattern=XS_2__long=16__seed=2",
             "repro__layer_pattern=S_4__long=16__seed=1", "repro__layer_pattern=XS_2__long=128__seed=1"]
    wr = [(Run(label=n, path=P(n)), (w, 0), str(w)) for n, w in zip(names, (16, 16, 16, 128))]
    assert _grid_row_labels(wr) == ["16 (layer_pattern=XS_2, seed=1)", "16 (layer_pattern=XS_2, seed=2)",
                                    "16 (layer_pattern=S_4, seed=1)", "128"]
