"""Start and stop the processes of a whole hotrefresh system on one machine.

Used by ``hotrefresh demo`` and by the tests that need the real thing (end-to-end,
Prometheus): an embedded Redis when none is configured, API replicas under uvicorn and
Celery worker processes, each with its own log file and its own Prometheus multiprocess
directory (so one scrape per process group never double-counts another group's counters).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200; fail early (with the reason) if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last})")


class ServerProcess:
    """A server run as a child in its own process group, with its own folder (``dir``) and log
    (``dir / log_name``): the embedded Milvus, the tests' SeaweedFS. :meth:`kill` is a crash
    (SIGKILL to the group), :meth:`remove` kills it and deletes its folder."""

    log_name = "server.log"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen | None = None

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / self.log_name).read_text(errors="replace").splitlines()[-n:])
        return ""

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    url: str | None = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class System:
    """The processes of one running system; a context manager that always cleans up."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env_for(self, name: str, extra: dict[str, str] | None) -> dict[str, str]:
        env = {**os.environ, **self.env, **(extra or {})}
        prom_dir = self.workdir / "prometheus" / name
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / "logs" / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        popen = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env_for(name, extra_env),
            start_new_session=True,  # our signals reach the whole group (uvicorn/celery children)
        )
        log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_redis(self, port: int | None = None) -> str:
        """An embedded, memory-only redis-server; returns its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; set HOTREFRESH_REDIS_URL to a running Redis")
        port = port or free_port()
        proc = self._spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
        )
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis failed to start:\n{proc.log_tail()}") from None
                time.sleep(0.1)
        proc.url = url
        self.env["HOTREFRESH_REDIS_URL"] = url
        return url

    def start_api(
        self,
        *,
        name: str = "api",
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> Proc:
        port = port or free_port()
        proc = self._spawn(
            name,
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            extra_env,
        )
        proc.url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{proc.url}/readyz", timeout=timeout, proc=proc.popen)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not become ready: {exc}\n{proc.log_tail()}") from exc
        return proc

    def start_worker(
        self,
        *,
        name: str = "worker",
        concurrency: int = 1,
        metrics_port: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        metrics_port = metrics_port or free_port()
        proc = self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "cli",
                "worker",
                "--concurrency",
                str(concurrency),
                "--metrics-port",
                str(metrics_port),
                "--hostname",
                f"{name}-{os.getpid()}@%h",
            ],
            extra_env,
        )
        proc.url = f"http://127.0.0.1:{metrics_port}"
        try:
            wait_http(f"{proc.url}/metrics", timeout=60, proc=proc.popen)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{proc.log_tail()}") from exc
        return proc

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Signal a process and all its children (e.g. SIGKILL a Celery worker mid-batch)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        proc.popen.wait(timeout=30)
        self.procs.remove(proc)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)
        self.procs.clear()
