"""trainers/bench_vs_torch.py: its arithmetic, its refusals and its PyTorch
loop (skipped without PyTorch, the optional `bench` extra)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trainers import bench_vs_torch


def _figures(cpu, wall):
    return {"train_cpu_seconds": cpu, "train_seconds": wall,
            "accuracy_matrix": [[1.0]]}


def test_summary_takes_medians_of_per_round_ratios():
    rounds = [
        {"cl_zoo ewc": _figures(2.0, 1.0), "torch ewc": _figures(3.0, 1.0)},
        {"cl_zoo ewc": _figures(4.0, 2.0), "torch ewc": _figures(4.0, 1.0)},
        {"cl_zoo ewc": _figures(1.0, 1.0), "torch ewc": _figures(1.0, 3.0)},
    ]
    rates, ratios = bench_vs_torch.summarize(rounds, ["ewc"], samples=1200)
    assert rates["cl_zoo ewc"]["cpu"] == 600  # median of 600, 300, 1200
    assert rates["torch ewc"]["wall"] == 1200
    assert ratios["ewc"]["cpu"] == 1.0  # median of 1.5, 1.0, 1.0
    assert ratios["ewc"]["wall"] == 1.0  # median of 1.0, 0.5, 3.0


def test_refusals(monkeypatch, capsys):
    assert bench_vs_torch.main(["--methods=gem"]) == 2
    assert "no PyTorch loop for gem" in capsys.readouterr().err
    assert bench_vs_torch.main(["--rounds=0"]) == 2
    monkeypatch.setattr(bench_vs_torch, "torch_available", lambda: False)
    assert bench_vs_torch.main([]) == 2
    assert 'pip install -e ".[bench]"' in capsys.readouterr().err


def _write_data(path, methods):
    rng = np.random.default_rng(0)
    arrays = {}
    for task in range(2):
        labels = np.repeat([2 * task, 2 * task + 1], 128)
        images = 0.1 * rng.random((256, 28, 28, 1), dtype=np.float32)
        images[labels % 2 == 1] += 0.8
        arrays[f"train_x_{task}"] = images
        arrays[f"train_y_{task}"] = labels
        # The order cl_zoo's pipeline gives (sorted data would not train).
        arrays[f"order_{task}_0"] = rng.permutation(256)
        arrays[f"test_x_{task}"] = images[::4]
        arrays[f"test_y_{task}"] = labels[::4]
    np.savez(path, **arrays)
    config = {"activation": "relu", "head": "single", "hidden_units": [16],
              "optimizer": "adam", "lr": 0.01, "adam_beta1": 0.9,
              "batch_size": 32}
    by_method = {
        "sgd": config,
        "ewc": {**config, "fisher_samples": 64, "ewc_lambda": 100.0},
        "bd_ewc": {**config, "fisher_samples": 64, "ewc_lambda": 100.0,
                   "bias_hidden": 4, "epsilon": 0.1},
    }
    with open(f"{path}.json", "w") as f:
        json.dump({"num_tasks": 2, "epochs": 1, "samples": 512,
                   "methods": {m: by_method[m] for m in methods}}, f)


@pytest.mark.heavy
@pytest.mark.parametrize("method", ["sgd", "ewc", "bd_ewc"])
def test_torch_loop_trains_and_reports(method, tmp_path):
    pytest.importorskip("torch")
    data, out = str(tmp_path / "data.npz"), str(tmp_path / "out.json")
    _write_data(data, [method])
    subprocess.run(
        [sys.executable, "-m", "trainers.bench_vs_torch",
         f"--worker=torch:{method}", f"--data={data}", f"--out={out}"],
        check=True, timeout=300)
    with open(out) as f:
        figures = json.load(f)
    assert figures["train_cpu_seconds"] > 0
    assert figures["train_seconds"] > 0
    rows = figures["accuracy_matrix"]
    assert [len(r) for r in rows] == [1, 2]
    assert rows[0][0] > 0.9  # the first task's two classes are separable
