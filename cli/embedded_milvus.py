"""An embedded Milvus for the demo, the benchmarks and the tests: the real engine that PyPI's
``milvus`` package ships (Go/C++, embedded etcd, local storage, binaries inside the wheel), run as
a child process with its own data directory and free ports. Production points
``HOTREFRESH_MILVUS_URI`` at a Milvus deployment instead (``docker-compose.yml``'s ``milvus``
profile, or a cluster).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from cli.launcher import ServerProcess, free_port

# The proxy's time tick (ms). A Strong search waits until the query node has seen a tick at or
# after the search's timestamp, so it costs about two ticks: 400 ms at Milvus's default of 200,
# 18-20 ms at 10 (measured on this machine, docs/index.md). The service searches Strong by
# default; deployments set ``proxy.timeTickInterval`` the same way (docs/deploy.md).
TIME_TICK_MS = 10

MILVUS_PORTS = (
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)


class EmbeddedMilvus(ServerProcess):
    """A real Milvus standalone (the Go/C++ engine PyPI's ``milvus`` package ships, with embedded
    etcd and local storage) with its own data directory and every port free; never
    ``milvus-lite``, a Python re-implementation. :meth:`kill` is a crash (SIGKILL), :meth:`start`
    brings it back on the same ports with its data.

    The package's ``milvus-server`` launcher is not used to run it: it picks the next port when
    one is still in TIME_WAIT after a crash (so a restarted server would come back elsewhere),
    and it leaves the engine's etcd on the fixed ports 2379/2380 (two servers on one machine
    collide). Its configuration writer is used once, then the engine runs from that file."""

    def __init__(self, time_tick_ms: int = TIME_TICK_MS) -> None:
        self.time_tick_ms = int(time_tick_ms)
        super().__init__(Path(tempfile.mkdtemp(prefix="hotrefresh-milvus-")))
        self.ports = {name: free_port() for name in (*MILVUS_PORTS, "etcd_port", "etcd_peer_port", "metrics_port")}
        self._configure()

    @property
    def port(self) -> int:
        return self.ports["proxy_port"]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _configure(self) -> None:
        from milvus import MilvusServerConfig, _initialize_data_files

        config = MilvusServerConfig(data_dir=str(self.dir))
        config.resolve_storage()
        for name in (*MILVUS_PORTS, "etcd_port"):
            config.set(name, self.ports[name])
        config.write_config()
        _initialize_data_files(str(self.dir))
        etcd = self.dir / "configs" / "etcd.yaml"
        client, peer = f"http://127.0.0.1:{self.ports['etcd_port']}", f"http://127.0.0.1:{self.ports['etcd_peer_port']}"
        etcd.write_text(
            f"name: default\ndata-dir: {self.dir / 'data' / 'etcd.data'}\n"
            f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: default={peer}\n"
        )
        yaml = self.dir / "configs" / "milvus.yaml"
        text = yaml.read_text()
        marker = "  use:\n    embed: true"
        assert marker in text, "the milvus package's config template changed"
        text = text.replace(marker, f"{marker}\n  config:\n    path: {etcd}", 1)
        tick = "  timeTickInterval: 200 #"
        assert tick in text, "the milvus package's config template changed"
        yaml.write_text(text.replace(tick, f"  timeTickInterval: {self.time_tick_ms} #", 1))

    def start(self, timeout: float = 180) -> None:
        binary = self.dir / "bin" / "milvus"
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.ports["metrics_port"]),
            "MILVUS_RUN_DIR": str(self.dir / "run"),
            "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        }
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [str(binary), "run", "standalone"],
            cwd=self.dir,  # it reads configs/milvus.yaml from here
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 180) -> None:
        """Until a fresh client can list collections (health alone is not enough: the proxy
        answers before the coordinators have recovered)."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"milvus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                client = MilvusClient(uri=self.uri, timeout=5)
                try:
                    client.list_collections()
                    return
                finally:
                    client.close()
            except MilvusException:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Milvus not serving after {timeout:.0f}s:\n{self.log_tail()}") from None
                time.sleep(0.5)
