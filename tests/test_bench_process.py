"""trainers/bench_process.py: whole trainer runs against another commit."""

import subprocess
import sys

import pytest

from trainers import bench_process


def test_refusals(capsys):
    assert bench_process.main(["--baseline=HEAD"]) == 2
    assert "after --" in capsys.readouterr().err
    assert bench_process.main(
        ["--baseline=HEAD", "--", "--model_dir=/tmp/x"]) == 2
    assert "--model_dir is chosen" in capsys.readouterr().err
    assert bench_process.main(
        ["--baseline=no-such-commit", "--", "--method=sgd"]) == 2
    assert "cannot check out no-such-commit" in capsys.readouterr().err


@pytest.mark.heavy
def test_times_both_checkouts():
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.bench_process", "--baseline=HEAD",
         "--rounds=1", "--", "--method=sgd",
         "--benchmark=gaussian_clusters", "--epochs=1", "--export=false"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "round 1/1: baseline" in proc.stdout
    assert "ratio (this checkout / baseline): CPU" in proc.stdout
