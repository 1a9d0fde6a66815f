"""The command line of `python -m trainers.train` (see the contract).

Bad input must end the run at once: exit status 2, one line on stderr that
names what was wrong and what is allowed, no traceback, nothing written. The
command runs in subprocesses, all started together (each pays the TensorFlow
import); `build_config` is also tested in-process with `flagsaver`.
"""

import concurrent.futures
import os
import re
import time

import pytest
from absl.testing import flagsaver

from cl_zoo import benchmarks
from cl_zoo.methods import method_names
from trainers import train

# TensorFlow's C++ start-up lines (absl/glog format), which no environment
# variable silences before absl::InitializeLog runs.
_CPP_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog"
    r"|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] )"
)

GOOD = ("--method=sgd", "--benchmark=split_mnist")

# id: (arguments besides --model_dir, fragments the message must hold:
#      what was wrong and what is allowed).
BAD_CASES = {
    "unknown_method": (
        ("--method=nope", "--benchmark=split_mnist"),
        ("'nope'", "finetune", "sgd_freeze", "ewc"),
    ),
    "unknown_benchmark": (
        ("--method=sgd", "--benchmark=nope"),
        ("'nope'", "split_mnist", "permuted_mnist"),
    ),
    "missing_method": (
        ("--benchmark=split_mnist",),
        ("--method", "required", "finetune"),
    ),
    "epochs_zero": (GOOD + ("--epochs=0",), ("--epochs=0", "positive")),
    "lr_negative": (GOOD + ("--lr=-1",), ("--lr=-1", "positive")),
    "batch_size_not_int": (
        GOOD + ("--batch_size=abc",),
        ("--batch_size=abc", "int"),
    ),
    "hidden_units_not_int": (
        GOOD + ("--hidden_units=3,x",),
        ("--hidden_units=3,x", "positive integers"),
    ),
    "unknown_strategy": (
        GOOD + ("--strategy=foo",),
        ("--strategy=foo", "mirrored", "multi_worker_mirrored"),
    ),
    "unknown_head": (
        GOOD + ("--head=both",),
        ("--head=both", "single", "multi"),
    ),
    "fixed_num_tasks": (
        GOOD + ("--num_tasks=3",),
        ("split_mnist", "num_tasks=3", "(5)", "permuted_mnist"),
    ),
    "unknown_flag": (
        GOOD + ("--no_such_flag=1",),
        ("no_such_flag", "--help"),
    ),
    "missing_model_dir": (GOOD, ("--model_dir", "required")),
    # Settings that the method (and its consolidation) would not read.
    "consolidation_with_dgm": (
        ("--method=dgm", "--benchmark=class_incremental_mnist",
         "--consolidation=ewc"),
        ("--consolidation=ewc cannot work with --method=dgm",),
    ),
    "epsilon_with_sgd": (
        ("--method=sgd", "--benchmark=split_mnist", "--epsilon=5"),
        ("--epsilon is not read by --method=sgd", "bd_ewc", "ad_ewc"),
    ),
    "bias_hidden_with_gem": (
        ("--method=gem", "--benchmark=split_mnist", "--bias_hidden=7"),
        ("--bias_hidden is not read by --method=gem", "bd_ewc"),
    ),
    # Offline tfds: the one clear line, without tfds's own warnings first.
    "tfds_not_prepared": (
        ("--method=sgd", "--benchmark=split_cifar10",
         "--data_dir=/nonexistent/tfds"),
        ("cifar10 is not prepared in /nonexistent/tfds", "tfds build"),
    ),
    # A --model_dir that cannot be a directory (the fixture makes the file).
    "model_dir_is_a_file": (GOOD, ("is a file, not a directory",)),
    "model_dir_under_a_file": (GOOD, ("cannot be made", "is a file")),
    "multi_worker_without_tf_config": (
        GOOD + ("--strategy=multi_worker_mirrored",),
        ("needs TF_CONFIG", "trainers.launch_local --workers=2"),
    ),
    "memory_units_with_ewc": (
        ("--method=ewc", "--benchmark=split_mnist", "--memory_units=3"),
        ("--memory_units is not read by --method=ewc", "ad_ewc"),
    ),
}

CONTRACT_FLAGS = (
    "method", "benchmark", "model_dir", "epochs", "batch_size", "lr", "seed",
    "num_tasks", "strategy", "num_cpu_devices",
)


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory, run_trainer):
    """Runs every bad command line and `--help`, two at a time."""
    root = tmp_path_factory.mktemp("trainer_runs")
    commands = {}
    for case, (args, _) in BAD_CASES.items():
        model_dir = str(root / case)
        if case.startswith("model_dir_"):
            (root / "a_file").write_text("keep me")
            model_dir = str(root / "a_file") + (
                "/sub" if case.endswith("under_a_file") else "")
        if case != "missing_model_dir":
            args = (*args, f"--model_dir={model_dir}")
        commands[case] = (args, model_dir)
    commands["help"] = (("--help",), None)
    commands["method_help"] = (
        ("--method=bd_ewc", "--benchmark=split_mnist", "--help"), None)

    def timed(args):
        start = time.monotonic()
        proc = run_trainer(*args, timeout=120)
        proc.seconds = time.monotonic() - start
        return proc

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            case: pool.submit(timed, args)
            for case, (args, _) in commands.items()
        }
        return {
            case: (futures[case].result(), commands[case][1])
            for case in commands
        }


def _message_lines(stderr):
    return [
        line for line in stderr.splitlines()
        if line.strip() and not _CPP_LOG.match(line)
    ]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_command_line_exits_2_with_one_line(trainer_runs, case):
    proc, model_dir = trainer_runs[case]
    details = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, details
    assert "Traceback" not in proc.stderr, details
    lines = _message_lines(proc.stderr)
    assert len(lines) == 1, details
    # Not even TensorFlow's start-up notices (cl_zoo.startup).
    assert proc.stderr.strip().splitlines() == lines, details
    assert lines[0].startswith("error: "), details
    for fragment in BAD_CASES[case][1]:
        assert fragment in lines[0], details
    if case.startswith("model_dir_"):
        with open(model_dir.removesuffix("/sub")) as f:
            assert f.read() == "keep me"
    elif model_dir is not None:
        assert not os.path.exists(model_dir), os.listdir(model_dir)
    # Two at a time on a busy machine: well under the 15 s a person waits.
    assert proc.seconds < 15, proc.seconds


def test_method_help_shows_the_defaults_it_will_use(trainer_runs):
    """`--method=bd_ewc --benchmark=split_mnist --help`: that method's and
    its consolidation's settings at the values the run resolves (the
    swept split-MNIST preset, not the declared defaults)."""
    proc, _ = trainer_runs["method_help"]
    assert proc.returncode == 0, proc.stderr
    for line in ("--bias_hidden=25", "--epsilon=0.1", "--ewc_lambda=1000",
                 "--fisher_normalize=max", "--lr=0.0003", "--epochs=5",
                 "--hidden_units=300,300,300,300,300"):
        assert "  " + line in proc.stdout.splitlines(), (line, proc.stdout)
    # Settings of other methods are not listed.
    assert "--memory_units" not in proc.stdout
    assert "--spp_lambda" not in proc.stdout


def test_every_declared_setting_is_refused_where_it_is_not_read():
    """Each setting of a method, consolidation or benchmark ends with
    ConfigError for some method or benchmark that does not read it."""
    from cl_zoo.benchmarks import BENCHMARKS, all_benchmark_settings, readers_of
    from cl_zoo.config import (
        RUN_SETTING_NAMES,
        ConfigError,
        all_settings,
        applicable_settings,
        resolve_config,
    )
    from cl_zoo.methods import get_method

    for name, setting in all_settings().items():
        if name in RUN_SETTING_NAMES:
            continue
        if name in all_benchmark_settings():
            benchmark = next(b for b in BENCHMARKS
                             if b not in readers_of(name))
            with pytest.raises(ConfigError, match=f"--{name} is not read by "
                               f"--benchmark={benchmark}"):
                resolve_config(get_method("sgd"), benchmark,
                               {name: setting.default or "x"})
            continue
        method = next(
            m for m in method_names()
            if name not in applicable_settings(
                get_method(m),
                resolve_config(get_method(m), "split_mnist",
                               {}).consolidation)
        )
        with pytest.raises(ConfigError, match=f"--{name} is not read by"):
            resolve_config(get_method(method), "split_mnist",
                           {name: setting.default})


def test_readme_method_table_and_error_example_match_the_registry(
        trainer_runs):
    """The README's method table names every registered method once, and
    its unknown-method example is the message the trainer prints."""
    with open(os.path.join(os.path.dirname(__file__), "..",
                           "README.md")) as f:
        readme = f.read()
    start = readme.index("| `--method` | what | head |")
    table = readme[start:readme.index("\n\n", start)].splitlines()[2:]
    names = [line.split("`")[1] for line in table]
    assert sorted(names) == sorted(method_names())
    proc, _ = trainer_runs["unknown_method"]
    (line,) = _message_lines(proc.stderr)
    assert line in readme.splitlines(), line


def test_help_documents_the_contract_flags_and_names(trainer_runs):
    proc, _ = trainer_runs["help"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in CONTRACT_FLAGS:
        assert re.search(rf"--{name}\b", proc.stdout), name
    for name in method_names():
        assert name in proc.stdout, name
    for name in benchmarks.BENCHMARKS:
        assert name in proc.stdout, name


# In-process: the resolved RunConfig -----------------------------------------
def test_every_setting_has_a_flag():
    """Each declared setting is a flag of the same name (method and
    benchmark have their own), so no setting is out of users' reach, and
    every resolved config's keys are declared settings."""
    from cl_zoo.config import all_settings
    from flags import common

    assert set(common.config_flag_names()) == set(all_settings())
    for name in method_names():
        config = common.resolved_defaults()[(name, "split_mnist")]
        assert set(config) - {"method", "benchmark"} <= set(all_settings())
        for key in common.config_flag_names():
            assert key in train.FLAGS, key


@flagsaver.flagsaver(
    method="dgm", benchmark="class_incremental_mnist", model_dir="/tmp/u",
    fast=True, generator_units=["32", "16"],
)
def test_build_config_fast_preset_and_generator_units():
    config = train.build_config()
    assert (config.epochs, config.replay_per_class) == (2, 16)
    assert config.generator_units == (32, 16) and config.adam_beta1 == 0.5



@flagsaver.flagsaver(
    method="finetune", benchmark="split_mnist", model_dir="/tmp/unused"
)
def test_build_config_layers_the_defaults():
    config = train.build_config()
    assert config.method == "finetune"
    assert config.benchmark == "split_mnist"
    assert config.model_dir == "/tmp/unused"
    assert config.head == "multi"  # the method's
    assert config.hidden_units == (300,) * 5  # the benchmark's
    assert config.epochs == 5
    assert config.batch_size == 128  # the generic one
    assert config.strategy == "default"


@flagsaver.flagsaver(
    method="finetune",
    benchmark="split_mnist",
    model_dir="/tmp/unused",
    head="single",
    hidden_units=["20", "10"],
    epochs=2,
    lr=0.5,
)
def test_build_config_user_values_win():
    config = train.build_config()
    assert config.head == "single"
    assert config.hidden_units == (20, 10)
    assert config.epochs == 2
    assert config.lr == 0.5


@flagsaver.flagsaver(
    method="sgd", benchmark="permuted_mnist", model_dir="/tmp/unused"
)
def test_build_config_permuted_mnist_defaults():
    config = train.build_config()
    assert config.head == "single"
    assert config.hidden_units == (128,) * 4


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"method": "nope"}, "Unknown method 'nope'"),
        ({"epochs": 0}, "--epochs=0"),
        ({"num_cpu_devices": 2}, "--strategy=mirrored"),
        ({"method": "online_ewc", "ewc_gamma": 2.0}, "--ewc_gamma=2.0"),
        ({"dropout": 1.0}, "--dropout=1.0"),
        ({"method": "spp", "spp_lambda": -1.0}, "--spp_lambda=-1.0"),
        ({"method": "gem", "memory_size": 0}, "--memory_size=0"),
        # A setting that the method, or its consolidation, does not read.
        ({"epsilon": 5.0}, "--epsilon is not read by --method=sgd"),
        ({"method": "dgm", "consolidation": "ewc"},
         "--consolidation=ewc cannot work with --method=dgm"),
        ({"optimizer": "sgd", "adam_beta1": 0.5},
         "--adam_beta1 is read with --optimizer=adam only"),
        ({"method": "ewc", "adam_beta1": 0.5, "epochs": 0}, "--epochs=0"),
        ({"model_dir": None}, "--model_dir is required"),
    ],
)
def test_build_config_exits_2_in_process(overrides, fragment, capsys):
    values = dict(method="sgd", benchmark="split_mnist", model_dir="/tmp/u")
    values.update(overrides)
    with flagsaver.flagsaver(**values):
        with pytest.raises(SystemExit) as exit_info:
            train.build_config()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert fragment in err


@flagsaver.flagsaver(method="spp", benchmark="split_mnist",
                     model_dir="/tmp/sweep", sweep="spp_lambda=0.5,4")
def test_sweep_makes_one_config_per_value():
    configs = train.sweep_configs()
    assert [c.spp_lambda for c in configs] == [0.5, 4.0]
    assert [c.model_dir for c in configs] == [
        "/tmp/sweep/spp_lambda=0.5", "/tmp/sweep/spp_lambda=4.0"]
    # Everything else is the one command line's.
    assert {c.hidden_units for c in configs} == {(512, 256)}


@pytest.mark.parametrize(
    "sweep, fragment",
    [
        ("nope=1,2", "expected KEY=V1,V2"),
        ("hidden_units=1,2", "expected KEY=V1,V2"),
        ("generator_capacity=2,3", "expected KEY=V1,V2"),
        ("spp_lambda", "give the values"),
        ("epochs=1,x", "type int"),
        ("lr_decay=0.5,2", "--lr_decay=2.0"),
        ("export=true,maybe", "type bool"),
    ],
)
def test_bad_sweep_exits_2(sweep, fragment, capsys):
    with flagsaver.flagsaver(method="spp", benchmark="split_mnist",
                             model_dir="/tmp/u", sweep=sweep):
        with pytest.raises(SystemExit) as exit_info:
            train.sweep_configs()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err


def test_bench_step_prints_wall_and_cpu_ratios(run_trainer):
    result = run_trainer(
        "--method=bd_ewc", "--benchmark=gaussian_clusters", "--steps=3",
        "--repeats=2",
        "--set=bias_hidden=7,consolidation=none,hidden_units=16:8",
        module="trainers.bench_step",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("set: bias_hidden=7, consolidation=none, hidden_units=(16, 8)"
            in result.stdout)
    assert "layers (16, 8)" in result.stdout
    for clock in ("wall", "cpu"):
        match = re.search(
            rf"^{clock}: ratio bd_ewc / plain: ([0-9.]+) \(median\), "
            r"([0-9.]+) \(min\)$", result.stdout, re.MULTILINE,
        )
        assert match, result.stdout
        assert all(float(v) > 0 for v in match.groups())


def test_parse_setting_reads_lists_with_colons():
    from cl_zoo.config import parse_setting

    assert parse_setting("generator_capacity", "6:2.5") == (6.0, 2.5)
    assert parse_setting("hidden_units", "200:100") == (200, 100)
    with pytest.raises(ValueError):
        parse_setting("hidden_units", "2:x")


@pytest.mark.parametrize("flag, fragment", [
    ("--benchmark=nope", "Unknown benchmark 'nope'"),
    ("--method=nope", "Unknown method 'nope'"),
    ("--set=bias_hidden=x", "cannot read 'x' as int"),
    ("--set=nope=1", "KEY a run setting; got 'nope=1'"),
    ("--set=epsilon=-1", "epsilon"),
    ("--set=hidden_units=2:x", "cannot read '2:x' as list of int"),
])
def test_bench_step_bad_names_exit_2(run_trainer, flag, fragment):
    result = run_trainer(flag, "--steps=1", "--repeats=1",
                         module="trainers.bench_step")
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    # One line: no TensorFlow start-up notices (cl_zoo.startup).
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_lists_every_methods_own_default():
    """The per-method defaults in --lr/--epsilon/... help come from the
    code: every method whose resolved default differs is named."""
    from cl_zoo.config import all_settings, resolve_config
    from cl_zoo.methods import get_method
    from flags.common import method_defaults_help

    for key in ("lr", "epsilon", "bias_hidden", "ewc_lambda", "head"):
        text = method_defaults_help(key)
        base = all_settings()[key].default
        assert text.startswith(f"Default {base:g}" if isinstance(
            base, float | int) else f"Default {base}")
        for name in method_names():
            differs = any(
                resolve_config(get_method(name), b, {}).get(key, base)
                != base
                for b in benchmarks.BENCHMARKS
            )
            named = re.search(rf"\b{name}\b", text) is not None
            assert named == differs, (key, name, text)
    assert "0.001 for ad and ad_ewc except on disjoint_mnist" in \
        method_defaults_help("epsilon")
    assert "25 for bd_ewc and gd_ewc on split_mnist" in \
        method_defaults_help("bias_hidden")
    assert method_defaults_help("optimizer") == (
        "Default adam (sgd for gem, lwf, mas, si and spp on permuted_mnist "
        "and split_mnist).")


# Interrupting and sharing a run directory -----------------------------------
@pytest.mark.heavy
def test_ctrl_c_exits_130_with_one_line_and_the_rerun_resumes(tmp_path):
    """SIGINT mid-run: exit 130, one line saying how to resume, no
    traceback; the same command then resumes at the epoch after the last
    finished one (counted from 1) and finishes."""
    import signal
    import subprocess
    import sys

    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "trainers.train", "--method=sgd",
            "--benchmark=gaussian_clusters", f"--model_dir={model_dir}",
            "--epochs=40", "--export=false"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(args, cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (model_dir / "progress.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = _message_lines(err)
    assert lines[-1] == (f"interrupted: {model_dir} keeps every finished "
                         "epoch; rerun the same command to resume."), err
    again = subprocess.run(args, cwd=root, env=env, text=True,
                           capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    resumed = re.search(r"^Resuming .* at task (\d)/2, epoch (\d+)/40\.$",
                        again.stdout, re.MULTILINE)
    assert resumed, again.stdout
    assert int(resumed.group(2)) >= 2  # one epoch at least was kept
    # Output to a pipe: one line per epoch, no progress-bar redraws.
    assert "\r" not in again.stdout and "\x1b[" not in again.stdout
    assert re.search(r"^\d+/\d+ - \d+s - ", again.stdout, re.MULTILINE)
    assert (model_dir / "results.json").exists()


def test_a_run_holds_its_model_dir_and_a_killed_one_lets_go(tmp_path):
    """A second run on a held directory fails at once naming the holder;
    the lock of a process killed with SIGKILL is gone with it."""
    import subprocess
    import sys

    from cl_zoo.train_lib import RunLock, RunStateError

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"f = open({str(tmp_path / '.lock')!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.write('pid 4242, started now'); f.flush()\n"
         "print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = RunLock(str(tmp_path))
        assert lock.holder() == "pid 4242, started now"
        with pytest.raises(RunStateError, match=r"in use by another run "
                           r"\(pid 4242, started now\)"):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    lock.acquire()
    assert "pid" in (tmp_path / ".lock").read_text()
    assert "pid" in RunLock(str(tmp_path)).holder()
    lock.release()
    assert RunLock(str(tmp_path)).holder() is None


def test_help_is_short_grouped_and_leads_with_the_required_flags(
        trainer_runs):
    """`--help`: the required flags first, then the run's settings in
    groups, one line each; every run setting in exactly one group."""
    from cl_zoo.config import RUN_GROUPS, RUN_SETTING_NAMES

    grouped = [n for names in RUN_GROUPS.values() for n in names]
    assert sorted(grouped) == sorted(RUN_SETTING_NAMES)
    proc, _ = trainer_runs["help"]
    lines = proc.stdout.splitlines()
    assert len(lines) < 60, len(lines)
    assert lines[2] == "Required:"
    assert [line.split("=")[0].strip() for line in lines[3:6]] == [
        "--method", "--benchmark", "--model_dir"]
    for group in RUN_GROUPS:
        assert f"{group}:" in lines
    assert "--ewc_lambda" not in proc.stdout  # a method's: one flag away
    assert "--helpfull" in lines[-1]


def test_quiet_startup_drops_only_the_known_notices(capfd):
    from cl_zoo.startup import quiet_startup

    with quiet_startup():
        os.write(2, b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to "
                    b"cuInit: INTERNAL: CUDA error: UNKNOWN ERROR (303)\n")
        os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find "
                    b"cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"E0000 00:00:1.0 1 some_op.cc:9] a real error\n")
    err = capfd.readouterr().err
    assert err.splitlines() == ["E0000 00:00:1.0 1 some_op.cc:9] a real error"]
