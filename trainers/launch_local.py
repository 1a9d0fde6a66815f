r"""Runs one training on N local worker processes, as a cluster would.

    python -m trainers.launch_local --workers=2 -- \
        --method=bd_ewc --benchmark=split_mnist --model_dir=/tmp/bd_ewc_mw

Each worker is `python -m trainers.train <flags>
--strategy=multi_worker_mirrored` with its own TF_CONFIG on 127.0.0.1
ports; worker 0 (the chief) writes --model_dir and prints the progress, the
others print only their errors, prefixed. Where it can, the launcher first
enters a private network namespace (`unshare -n`, loopback only), since
TensorFlow's gRPC servers listen on every interface.

If a worker fails or is killed, the others are stopped and the launcher
exits with that worker's status; rerunning the same command resumes the run
from its last finished epoch. Ctrl-C stops every worker (status 130).
On a real cluster, start `python -m trainers.train ... --strategy=
multi_worker_mirrored` on each host with that host's TF_CONFIG
(docs/distributed.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

USAGE = ("usage: python -m trainers.launch_local --workers=N "
         "[--program=MODULE] [--no_namespace] -- <train flags>")
PROGRAM = "trainers.train"
NAMESPACE_ENV = "CL_ZOO_LAUNCH_NETNS"  # set inside the namespace we made
GRACE_S = 5.0  # how long the others get to stop after one worker ended


def _fail(message, status=2):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def parse_args(argv):
    """`(workers, use_namespace, program, train_flags)` from the command
    line. `--program=MODULE` runs another module that takes the train
    flags (a script of your own on `cl_zoo.train_lib`)."""
    if "--" not in argv:
        _fail(f"put the train flags after '--'. {USAGE}")
    cut = argv.index("--")
    own, flags = argv[:cut], argv[cut + 1:]
    workers, namespace, program = None, True, PROGRAM
    for word in own:
        if word.startswith("--workers="):
            try:
                workers = int(word.split("=", 1)[1])
            except ValueError:
                _fail(f"{word}: expected an integer >= 1. {USAGE}")
        elif word == "--no_namespace":
            namespace = False
        elif word.startswith("--program="):
            program = word.split("=", 1)[1]
        elif word in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        else:
            _fail(f"unknown option {word}. {USAGE}")
    if workers is None or workers < 1:
        _fail(f"--workers=N is required (N >= 1). {USAGE}")
    for word in flags:
        if word.startswith("--strategy=") and \
                word != "--strategy=multi_worker_mirrored":
            _fail(f"{word}: the launcher runs --strategy="
                  "multi_worker_mirrored; leave --strategy out.")
    if not any(w.startswith("--model_dir=") for w in flags):
        _fail("--model_dir is required: where the chief writes the run.")
    if "--strategy=multi_worker_mirrored" not in flags:
        flags = [*flags, "--strategy=multi_worker_mirrored"]
    return workers, namespace, program, flags


# ------------------------------------------------------------ namespace
def _loopback_up():
    """Brings `lo` up in a fresh network namespace (SIOCSIFFLAGS)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags,
                                                  request)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo",
                                                 flags | iff_up))


def _namespace_command():
    """The `unshare` prefix that works here, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "-n"], [unshare, "-r", "-n"]):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True,
                                timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    return None


def enter_namespace(argv):
    """Re-executes the launcher inside a private network namespace when
    one can be made; returns only when it runs inside one or cannot."""
    if os.environ.get(NAMESPACE_ENV):
        _loopback_up()
        return True
    prefix = _namespace_command()
    if prefix is None:
        print("launch_local: no private network namespace here (unshare "
              "failed); the workers' servers listen on every interface.",
              file=sys.stderr, flush=True)
        return False
    env = {**os.environ, NAMESPACE_ENV: "1"}
    command = [*prefix, sys.executable, "-m", "trainers.launch_local",
               *argv]
    proc = subprocess.Popen(command, env=env)
    _forward_signals([proc])
    sys.exit(proc.wait())


# -------------------------------------------------------------- workers
def free_ports(count):
    """`count` free TCP ports on 127.0.0.1 (held until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    return json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    })


def _prefix_lines(stream, prefix, out):
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()


def _forward_signals(procs):
    def forward(signum, frame):
        del frame
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)


def start_workers(workers, flags, program=PROGRAM):
    ports = free_ports(workers)
    procs = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        chief = index == 0
        proc = subprocess.Popen(
            [sys.executable, "-m", program, *flags],
            env=env,
            stdout=None if chief else subprocess.DEVNULL,
            stderr=None if chief else subprocess.PIPE,
            text=True,
        )
        if not chief:
            threading.Thread(
                target=_prefix_lines,
                args=(proc.stderr, f"[worker {index}] ", sys.stderr),
                daemon=True,
            ).start()
        procs.append(proc)
    return procs


def supervise(procs):
    """Waits for every worker; when one ends badly, stops the others.
    Returns the launcher's exit status."""
    _forward_signals(procs)
    failed = None
    while True:
        running = [p for p in procs if p.poll() is None]
        for index, proc in enumerate(procs):
            code = proc.poll()
            if code not in (None, 0) and failed is None:
                failed = (index, code)
        if failed is not None and running:
            index, code = failed
            how = (f"was killed (signal {-code})" if code < 0
                   else f"exited with status {code}")
            print(f"launch_local: worker {index} {how}; stopping the others. "
                  "Rerun the same command to resume from the last finished "
                  "epoch.", file=sys.stderr, flush=True)
            for proc in running:
                proc.terminate()
            deadline = time.monotonic() + GRACE_S
            for proc in running:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            break
        if not running:
            break
        time.sleep(0.2)
    if failed is None:
        return 0
    code = failed[1]
    return 128 - code if code < 0 else code


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    workers, namespace, program, flags = parse_args(argv)
    if namespace:
        enter_namespace(argv)
    return supervise(start_workers(workers, flags, program))


if __name__ == "__main__":
    sys.exit(main())
