"""mpips plot: every series drawn in one colour per file, single points
shown, and an error for a file with nothing to plot."""

import json

import pytest

from tests.mpitools import run_py


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_draws_single_points_and_fails_on_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    one = tmp_path / "a" / "metrics.jsonl"
    write(one, [{"split": "train", "time": 1.0, "examples": 100, "loss": 0.5},
                {"split": "test", "time": 1.5, "examples": 100, "logloss": 0.4, "auc": 0.8}])
    two = tmp_path / "b" / "metrics.jsonl"
    write(two, [{"split": "train", "time": t, "examples": 100 * t, "loss": 1 / t}
                for t in (1.0, 2.0, 3.0)])
    out = tmp_path / "curves.png"
    proc = run_py("-m", "mpips", "plot", str(one), str(two), "-o", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "(12 points)" in proc.stdout, proc.stdout  # a: 2 + 2 x 2, b: 2 x 3 (two panels each)
    image = imread(out)
    # a's single test point is drawn in a's colour (matplotlib's C0, blue)
    blue = ((image[..., 2] > 0.6) & (image[..., 0] < 0.3)).sum()
    assert blue > 20
    empty = tmp_path / "c" / "metrics.jsonl"
    write(empty, [{"split": "consistency", "tasks": 3}])
    proc = run_py("-m", "mpips", "plot", str(empty), "-o", str(tmp_path / "x.png"), timeout=60)
    assert proc.returncode == 1 and "no train or test lines to plot" in proc.stderr
    assert not (tmp_path / "x.png").exists()
