"""A real multi-node Ray cluster on this machine, for the tests: `ray start --head` and
`ray start --address` worker nodes, each on its own ports and temp dir, token auth off for
all of them and their clients (RAY_AUTH_MODE=disabled), every node in a session of its
own so that it can be stopped, or killed mid-run, by its own processes alone (never with
`ray stop`, which ends every Ray process on the host)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers_engines import free_port

RAY = str(Path(sys.executable).parent / "ray")


def session_processes(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, s, st in (line.split() for line in out.splitlines() if len(line.split()) == 3)
            if int(s) == sid and not st.startswith("Z")]


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    for pid in session_processes(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class LocalRayCluster:
    def __init__(self, tmp: Path, workers: int = 1, cpus_per_node: int = 1):
        # Ray's socket paths must stay under 108 bytes: the nodes' temp dirs get a short root
        self.logs = tmp
        self.tmp = Path(tempfile.mkdtemp(prefix="tm-ray-"))
        self.workers, self.cpus = workers, cpus_per_node
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.head: subprocess.Popen | None = None
        self.worker_nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen([RAY, "start", *args, f"--num-cpus={self.cpus}", "--disable-usage-stats", "--block"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> "LocalRayCluster":
        self.head = self._node("head", ["--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
                                        f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                                        f"--ray-client-server-port={self.client_port}", f"--temp-dir={self.tmp / 'head'}"])
        self.wait_for_nodes(1)
        for _ in range(self.workers):
            self.add_worker()
        return self

    def add_worker(self) -> subprocess.Popen:
        i = len(self.worker_nodes)
        node = self._node(f"worker-{i}", ["--node-ip-address=127.0.0.1", f"--address={self.address}",
                                          f"--temp-dir={self.tmp / f'w{i}'}"])
        self.worker_nodes.append(node)
        self.wait_for_nodes(1 + sum(1 for n in self.worker_nodes if n.poll() is None))
        return node

    def alive_nodes(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=100", timeout=5) as r:
                nodes = json.loads(r.read())["data"]["result"]["result"]
        except OSError:
            return 0
        return sum(1 for n in nodes if n.get("state") == "ALIVE")

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.head is not None and self.head.poll() is not None:
                raise RuntimeError(f"the Ray head exited: {(self.logs / 'head.log').read_text()[-3000:]}")
            if self.alive_nodes() >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{n} Ray nodes were not alive within {timeout}s: {(self.logs / 'head.log').read_text()[-2000:]}")

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL every process of worker node i: a lost node."""
        node = self.worker_nodes[i]
        kill_session(node.pid)
        node.wait(30)

    def stop(self) -> None:
        nodes = [n for n in [*self.worker_nodes, self.head] if n is not None]
        for n in nodes:  # `ray start --block` ends its node's processes on SIGTERM
            if n.poll() is None:
                n.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(session_processes(n.pid) for n in nodes):
            time.sleep(0.2)
        for n in nodes:  # what did not end in time
            kill_session(n.pid)
            try:
                n.wait(15)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
