"""Servers the cluster-path tests start on 127.0.0.1 and stop: an S3-protocol object store (moto's
standalone server, a real HTTP server, not a mocked client), an MLflow tracking server and a Ray
cluster of several nodes.

Clients find the object store through the standard AWS_* variables (`S3Server.env`), which pyarrow,
boto3 and MLflow all read, exactly as on a cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, what: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers, even if not 200
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class S3Server:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.env = {"AWS_ACCESS_KEY_ID": "gahb-test", "AWS_SECRET_ACCESS_KEY": "gahb-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys


@contextmanager
def s3_server(log_dir: Path):
    port = free_port()
    log = log_dir / "s3-server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint, process, "the S3 server", log)
        yield S3Server(endpoint)
    finally:
        _stop(process)


@contextmanager
def mlflow_server(log_dir: Path, backend_store: str, artifacts_destination: str, env: dict[str, str]):
    """`mlflow server` with a SQL backend store, serving artifacts it keeps at `artifacts_destination`
    (e.g. on the S3 server, reached through `env`). Yields its tracking URI."""
    port = free_port()
    log = log_dir / "mlflow-server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend_store, "--artifacts-destination", artifacts_destination,
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        uri = f"http://127.0.0.1:{port}"
        # 300 s: on a busy 2-CPU machine its first start (database migrations, imports) took over 120 s
        _wait_http(f"{uri}/health", process, "the MLflow tracking server", log, timeout=300)
        yield uri
    finally:
        _stop(process)


class RayCluster:
    """A Ray cluster of separate nodes on this machine: a head with no CPUs (so all work lands on
    the workers, as on a real cluster whose head only coordinates) and worker nodes added one by one.
    Every node is a `ray start --block` in its own process group, so the test can stop exactly its
    own nodes (never another Ray on the machine) and remove one abruptly, like a lost machine."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.workers: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []
        self.head = self._start("head", ["--head", "--num-cpus=0", f"--port={self.port}",
                                         f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                                         "--dashboard-host=127.0.0.1"])
        _wait_http(f"{self.dashboard}/api/version", self.head, "the Ray head node", self.log_dir / "head.log")

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        ray = Path(sys.executable).parent / "ray"
        # Each worker node gets a temporary folder of its own, as separate machines have: nodes sharing
        # one share the runtime-env cache, and a worker node pruning it deletes the job's working
        # directory under the driver. The head keeps Ray's default, where processes that look for
        # "the" cluster (Ray Train's placement-group cleaner, for one) find its address. Short,
        # because Ray puts Unix sockets in it.
        if name != "head":
            self.temp_dirs.append(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
            args = [f"--temp-dir={self.temp_dirs[-1]}", *args]
        with open(self.log_dir / f"{name}.log", "w") as out:
            # the agent's port is fixed by default: co-located nodes would fight over it
            return subprocess.Popen([str(ray), "start", "--block", "--disable-usage-stats",
                                     f"--dashboard-agent-listen-port={free_port()}", *args], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env or self.env)

    def alive_nodes(self) -> int:
        import json

        with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=100", timeout=10) as response:
            nodes = json.load(response)["data"]["result"]["result"]
        return sum(node["state"] == "ALIVE" for node in nodes)

    def add_worker(self, cpus: int, env: dict[str, str]) -> subprocess.Popen:
        expected = self.alive_nodes() + 1
        worker = self._start(f"worker{len(self.workers)}", [f"--address=127.0.0.1:{self.port}", f"--num-cpus={cpus}"],
                             env)
        self.workers.append(worker)
        deadline = time.monotonic() + 120
        while self.alive_nodes() < expected:
            if time.monotonic() > deadline or worker.poll() is not None:
                log = self.log_dir / f"worker{len(self.workers) - 1}.log"
                raise RuntimeError(f"worker node did not join:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        return worker

    @staticmethod
    def node_processes(node: subprocess.Popen) -> list[tuple[int, str]]:
        """(pid, command line) of every process of one node: its own process group, and the Ray
        workers its raylet started (each of which makes its own process group)."""
        out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid=,args="], capture_output=True, text=True).stdout
        rows = [(int(pid), int(ppid), int(pgid), args)
                for pid, ppid, pgid, args in (line.split(None, 3) for line in out.splitlines() if line.strip())]
        group = {pid for pid, _, pgid, _ in rows if pgid == node.pid}
        return [(pid, args) for pid, ppid, pgid, args in rows if pid in group or ppid in group]

    @staticmethod
    def kill(node: subprocess.Popen) -> None:
        """The node's every process at once, with SIGKILL: a machine lost, not a node shut down."""
        for pid, _ in RayCluster.node_processes(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait()

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            self.kill(node)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
