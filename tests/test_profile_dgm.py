"""trainers/profile_dgm.py: DGM's step profile, through its command."""

import json

import pytest

from trainers import profile_dgm


@pytest.mark.heavy
def test_profiles_every_component_and_fit(mnist_data, run_trainer, tmp_path):
    del mnist_data  # skips without real MNIST
    out = tmp_path / "profile.json"
    args = ["--task=1", "--steps=2", "--components", "--fit", "--reps=1",
            f"--out={out}"]
    proc = run_trainer(*args, module="trainers.profile_dgm", timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "| whole step: model.fit, median |" in proc.stdout

    profile = json.loads(out.read_text())
    assert profile["command"] == " ".join(
        ["python", "-m", "trainers.profile_dgm", *args])
    assert profile["task"] == 1
    assert profile["units"] and all(
        n > 0 for n in profile["units"].values())
    assert set(profile["components"]) == set(profile_dgm.COMPONENTS)
    for key, seconds in profile["components"].items():
        assert seconds["wall"] > 0 and seconds["cpu"] > 0, key
    for key in ("first", "median", "mean", "total"):
        assert profile["fit"][f"{key}_wall"] > 0, key
        assert profile["fit"][f"{key}_cpu"] > 0, key
