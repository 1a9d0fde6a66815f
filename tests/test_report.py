"""trainers.report: the Markdown table of finished runs."""

import json

from trainers import report


def _results(method, acc):
    return {
        "method": method, "benchmark": "split_mnist", "acc": acc,
        "bwt": -0.1, "fwt": 0.02, "forgetting": 0.1,
        "accuracy_matrix": [[0.9, 0.0], [0.8, 0.95]],
        "train_seconds": 12.3, "storage_bytes_per_task": 40,
        "extra": {"head": "single", "average_accuracy_curve": [0.9, acc]},
    }


def test_table_from_run_directories(tmp_path):
    for method, acc in (("ewc", 0.875), ("sgd", 0.5)):
        run = tmp_path / method
        run.mkdir()
        (run / "results.json").write_text(json.dumps(_results(method, acc)))
    runs = report.load_runs([str(tmp_path / "*")])
    table = report.markdown_table(runs).splitlines()
    assert table[0].startswith("| run | method | benchmark | head | ACC %")
    assert table[2] == (
        f"| {tmp_path / 'ewc'} | ewc | split_mnist | single | 87.50 | "
        "-10.00 | +2.00 | 10.00 | 80.0 95.0 | 12 | 40 |"
    )
    assert table[3].startswith(f"| {tmp_path / 'sgd'} | sgd |")


def test_sweep_plot_is_a_png(tmp_path):
    runs = []
    for units, acc in ((1, 0.5), (9, 0.8)):
        r = _results("ad_ewc", acc)
        r["config"] = {"memory_units": units}
        runs.append(r)
    png = report.sweep_plot(runs, "memory_units", "sweep")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_ticks_are_whole_tasks(monkeypatch):
    from cl_zoo import plots

    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig))
    plots.curve_png([0.9, 0.8, 0.7])
    (ax,) = figures[0].axes
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks == [1, 2, 3]
    plots.plt.close(figures[0])
