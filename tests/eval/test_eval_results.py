"""Result aggregation (length x depth grid, distance buckets), JSON and PNG output."""

import json

import numpy as np
import pytest

from swax_megatron.eval import (accuracy_grid, distance_buckets, save_distance_plot,
                                save_heatmap, write_json)
from swax_megatron.eval.results import distance_figure, heatmap_figure


def _records():
    # length 1024: perfect; 4096: only depth 0 right; depth 50 at 4096 missing
    recs = []
    for depth in (0, 50, 100):
        recs += [{"task": "niah_single_1", "length": 1024, "depth": depth, "score": 1.0}] * 2
    recs += [{"task": "niah_single_1", "length": 4096, "depth": 0, "score": 1.0},
             {"task": "niah_single_1", "length": 4096, "depth": 0, "score": 0.5},
             {"task": "niah_single_1", "length": 4096, "depth": 100, "score": 0.0}]
    return recs


def test_accuracy_grid():
    g = accuracy_grid(_records())
    assert g["task"] == "niah_single_1" and g["lengths"] == [1024, 4096]
    assert g["depths"] == [0, 50, 100]
    assert g["matrix"] == [[100.0, 75.0], [100.0, None], [100.0, 0.0]]
    assert g["counts"] == [[2, 2], [2, 0], [2, 1]]
    assert g["by_length"] == {"1024": 100.0, "4096": 50.0}
    assert g["by_depth"] == {"0": 87.5, "50": 100.0, "100": pytest.approx(200 / 3)}
    assert g["mean"] == pytest.approx(100 * 7.5 / 9) and g["n"] == 9
    json.dumps(g, allow_nan=False)
    with pytest.raises(ValueError):
        accuracy_grid([{"length": 8, "depth": 0, "score": 100}])  # scores are fractions


def test_write_json_round_trip(tmp_path):
    g = accuracy_grid(_records())
    write_json(tmp_path / "r" / "grid.json", {"grid": g})
    assert json.loads((tmp_path / "r" / "grid.json").read_text()) == {"grid": g}
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists()


def test_heatmap_png(tmp_path):
    import matplotlib.image

    g = accuracy_grid(_records())
    fig = heatmap_figure(g)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "context length (tokens)"
    assert ax.get_ylabel() == "needle depth (% of context)"
    assert fig.axes[1].get_ylabel() == "accuracy (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1k", "4k"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "50", "100"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "100", "100", "100", "75"]
    assert "niah_single_1" in ax.get_title() and "83.3%" in ax.get_title()
    path = tmp_path / "heat.png"
    save_heatmap(g, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)[..., :3]
    assert img.shape[0] > 200 and img.shape[1] > 200
    red = (img[..., 0] > 0.6) & (img[..., 1] < 0.3)
    green = (img[..., 1] > 0.35) & (img[..., 0] < 0.15) & (img[..., 1] > img[..., 2])
    grey = (np.abs(img[..., 0] - 0.816) < 0.01) & (np.abs(img[..., 1] - 0.816) < 0.01)
    assert red.sum() > 500 and green.sum() > 500 and grey.sum() > 500  # 0%, 100%, empty cell
    with pytest.raises(ValueError):
        save_heatmap(accuracy_grid([]), tmp_path / "empty.png")


def test_distance_buckets():
    recs = [{"distance": d, "score": float(d < 100), "length": 256 if d < 150 else 512}
            for d in range(0, 200, 10)]
    b = distance_buckets(recs, edges=[0, 50, 100, 190])
    assert b["accuracy"] == [100.0, 100.0, 0.0] and b["counts"] == [5, 5, 10]  # 190 included
    assert b["by_length"]["256"]["counts"] == [5, 5, 5]
    auto = distance_buckets(recs, num_buckets=4)
    assert auto["edges"] == [0, 48, 96, 144, 192] and sum(auto["counts"]) == 20
    assert distance_buckets(recs, edges=[20, 40])["counts"] == [3]  # 20, 30, 40
    with pytest.raises(ValueError):
        distance_buckets(recs, edges=[10, 10])
    with pytest.raises(ValueError):
        distance_buckets([{"distance": None, "score": 1.0}])


def test_distance_plot(tmp_path):
    series = {"window 16": {"edges": [0, 128, 256], "accuracy": [90.0, 40.0]},
              "window 256": {"edges": [0, 128, 256], "accuracy": [95.0, None]}}
    fig = distance_figure(series)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "distance from the stored value to the query (tokens)"
    assert ax.get_ylabel() == "recall accuracy (%)"
    lines = ax.get_lines()
    assert [tuple(ln.get_xdata()) for ln in lines] == [(64.0, 192.0), (64.0,)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["window 16", "window 256"]
    save_distance_plot(series, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
