"""Test engines and services: an engine that runs every task twice at once, and Beam's own
job service plus an external worker pool for PortableRunner."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from pipelines.engines.base import Engine
from pipelines.tasks import Task, raise_failure

REPO = Path(__file__).resolve().parents[1]


class TwiceConcurrently(Engine):
    """Runs every task twice, both copies at the same time, each in a fresh subprocess
    (`python -m pipelines.tasks`), the tasks of a phase in a random order: what Ray retries,
    Beam's re-executed bundles and zombie workers do to a task, all at once."""

    name = "twice-concurrently"

    def __init__(self, seed: int, pairs_at_once: int = 1):
        super().__init__(workers=pairs_at_once)
        self.rng = random.Random(seed)
        self.started = 0

    def run(self, tasks: list[Task], label: str, on_done=None) -> None:
        order = list(tasks)
        self.rng.shuffle(order)
        failed: list[str] = []
        for i in range(0, len(order), self.workers):
            procs = []
            for task in order[i:i + self.workers]:
                for _ in range(2):
                    p = subprocess.Popen([sys.executable, "-m", "pipelines.tasks"], cwd=REPO, stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    p.stdin.write(task.to_json())
                    p.stdin.close()
                    procs.append(p)
                    self.started += 1
            for p in procs:
                err = p.stderr.read()
                if p.wait() != 0:
                    failed.append(err[-2000:])
        if failed:
            raise_failure(tasks, RuntimeError(f"{len(failed)} task processes failed; last: {failed[-1]}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """End a process this test started, and its children, by its process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextmanager
def beam_job_service(tmp: Path):
    """Beam's Python job service and an EXTERNAL worker pool on loopback ports: the job API
    that the Flink and Spark job servers speak. Yields the PortableRunner flags."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    job_port, pool_port = free_port(), free_port()
    logs = [open(tmp / "job_service.log", "w"), open(tmp / "worker_pool.log", "w")]
    job = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(job_port)], stdout=logs[0], stderr=subprocess.STDOUT, env=env,
                           start_new_session=True)
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             "--service_port", str(pool_port)], stdout=logs[1], stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        _wait_for_port(job_port, job, "Beam job service")
        _wait_for_port(pool_port, pool, "Beam worker pool")
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
               f"--environment_config=localhost:{pool_port}"]
    finally:
        stop(pool)
        stop(job)
        for f in logs:
            f.close()
