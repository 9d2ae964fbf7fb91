"""Typed configuration of every process (API, worker, CLI), read from ``HOTREFRESH_*`` variables.

The one place any process of ours reads its configuration: no module reads ``os.environ`` for a
``HOTREFRESH_*`` variable, and the CLI's options default to these fields. (Variables that belong
to libraries, such as ``PROMETHEUS_MULTIPROC_DIR`` or ``OMP_NUM_THREADS``, are set by our
processes for those libraries and read by them.)

Built on first use through :func:`get_settings` rather than at import time, so tests and
the CLI can set the environment first and clear the cache between runs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKEN = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOTREFRESH_", env_file=None, extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    admin_token: str = PLACEHOLDER_TOKEN

    data_dir: Path = Path("var")
    database_url: str = ""  # default: SQLite under data_dir
    # SQLite only (service.db.session): each connection's page cache in MiB, and a WAL checkpoint
    # every this many pages (4 KiB each). A cache holds pages the OS page cache holds anyway, so
    # it is bounded per connection, not sized to the database; why these defaults and what a
    # bigger cache does at 1M items: docs/service.md ("SQLite at scale").
    sqlite_cache_mib: int = Field(default=64, ge=2, le=65536)
    sqlite_checkpoint_pages: int = Field(default=16384, ge=100, le=1_048_576)
    redis_url: str = ""  # default: embedded redis-server started by the CLI, else 127.0.0.1:6379
    redis_prefix: str = "hotrefresh"  # every Redis key starts with this (lets tests and tenants share a server)

    image_root: Path | None = None  # default: data_dir / "images"
    # Where gallery images are kept (service.imagestore): unset or ``file:///path`` for files on
    # disk (unset: image_root above), ``s3://bucket/prefix`` for an S3-compatible object store
    # at s3_endpoint_url (unset: AWS) in s3_region, credentials from the standard AWS variables
    # (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...). A worker reads a batch's images with up to
    # image_fetch_concurrency requests at once; one request gives up after s3_timeout_s.
    image_store: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_timeout_s: float = Field(default=10.0, gt=0)
    image_fetch_concurrency: int = Field(default=32, ge=1, le=1024)
    model_dir: Path | None = None  # default: data_dir / "models"
    snapshot_dir: Path | None = None  # default: data_dir / "snapshots"
    max_upload_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Decoded size limit (width x height), checked on the header before decoding: uploads,
    # searches and the backfill's loader alike. 25 million pixels takes a 24-megapixel camera
    # photo (6000 x 4000) and refuses the rest; Pillow's own default (179 million) lets a PNG of
    # a few hundred KB cost hundreds of MB per request.
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    max_images_per_request: int = Field(default=256, ge=1)
    # /search's own budget: the pixels a query may decode to (after a JPEG's reduced-scale draft,
    # so a 24-megapixel phone photo decodes to a fraction of that for a 224-pixel model), and how
    # many requests of a process decode images at once (queries and uploads; a request that waits
    # decode_wait_s for a slot is answered 503 with Retry-After). Memory held by decoding is then
    # about decode_slots x one image at its limit. Why and measurements: docs/service.md.
    max_query_pixels: int = Field(default=4_194_304, ge=1)
    decode_slots: int = Field(default=4, ge=1, le=256)
    decode_wait_s: float = Field(default=2.0, ge=0)
    # An uploaded TorchScript encoder is loaded, run and frozen in a sandboxed child process
    # (models/sandbox.py) with these limits: wall-clock seconds, and bytes of address space.
    model_check_seconds: float = Field(default=60.0, gt=0, le=3600)
    model_check_memory_bytes: int = Field(default=4 << 30, ge=1 << 30)

    # Where the gallery's vectors are searched: "auto", "flat", "ivf" and "gpu" are kinds of the
    # in-process index every API replica holds (and follows the index log into); "milvus" keeps
    # them in Milvus, one collection per model, and API replicas hold no gallery (docs/index.md).
    index_backend: Literal["auto", "flat", "ivf", "gpu", "milvus"] = "auto"
    ivf_nlist: int = Field(default=1024, ge=1)
    ivf_nprobe: int = Field(default=32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The Milvus backend (index_backend "milvus"): server or cluster, credentials ("user:password"
    # or an API key), database, the prefix of its collection names, the index each model's
    # collection is built with (GPU_* on a GPU Milvus) with its build and search parameters, and
    # the consistency level of searches (Strong: a search sees every write acknowledged before it).
    milvus_uri: str = ""
    milvus_token: str = ""
    milvus_db: str = ""
    milvus_prefix: str = "hotrefresh"
    milvus_index_type: str = "HNSW"
    milvus_index_params: dict[str, Any] = Field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    milvus_search_params: dict[str, Any] = Field(default_factory=lambda: {"ef": 128})
    milvus_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    milvus_timeout_s: float = Field(default=10.0, gt=0)

    index_log_maxlen: int = Field(default=1_000_000, ge=100)
    index_log_poll_ms: int = Field(default=200, ge=1)
    # A staged index-log entry older than this is taken as left behind by its writer, and a
    # replica's follower publishes it; also how often followers look (service.indexport.relay).
    index_log_relay_s: float = Field(default=5.0, gt=0)
    # Fault injection for the process tests, honoured only with HOTREFRESH_ENV=test:
    # "before_publish" SIGKILLs this process between a write's SQL commit and its index-log append.
    failpoint: Literal["", "before_publish"] = ""

    batch_size: int = Field(default=64, ge=1, le=4096)
    lease_seconds: float = Field(default=60.0, gt=0)
    # Redis holds at most this many queued ids per upgrade, refilled from SQL in priority order
    # when it falls below half (service.queue): Redis memory per upgrade does not grow with the
    # gallery. Leased ids come on top (at most drain chains x 2 batches).
    queue_window: int = Field(default=20_000, ge=16)
    max_attempts: int = Field(default=3, ge=1)
    probe_size: int = Field(default=1000, ge=0)
    nfr_checkpoint_every: float = Field(default=0.05, gt=0, le=1)
    commit_grace_seconds: float | None = None  # auto-commit a completed upgrade after this long
    # Query plans (service.upgrade.plans): the probe NFR@1 "auto" keeps the serving plan within
    # (unset: the finished upgrade's NFR@1 estimated at each checkpoint plus one point; an upgrade's
    # own nfr_target overrides it), how dual and transform calibrate each space's
    # scores, the old->new map of transform, and at most how many backfilled pairs a refit reads.
    nfr_target: float | None = Field(default=None, ge=0, le=1)
    plan_calibration: Literal["raw", "zscore", "spread", "prob"] = "raw"
    plan_transform: Literal["lstsq", "procrustes"] = "lstsq"
    plan_fit_pairs: int = Field(default=20_000, ge=32)
    # Backfill workers (workers/): parallel self-re-enqueueing drain chains per upgrade, how long one
    # drain task runs before re-enqueueing itself, and the broker's redelivery timeout for a task
    # whose worker died (must exceed the longest task). See docs/workers.md.
    drain_chains: int = Field(default=8, ge=1, le=1024)
    drain_budget_seconds: float = Field(default=10.0, gt=0)
    visibility_timeout_seconds: float = Field(default=300.0, gt=0)
    # Extra niceness of a drain's loader and writer threads (Linux): the encoder thread is the
    # pipeline's bottleneck, so it should win a core whenever the stages beside it contend for one.
    helper_nice: int = Field(default=10, ge=0, le=19)
    # Threads that read and decode a backfill batch's images in each worker pool process (the
    # loader and decode_threads - 1 more). 1 suits a CPU-only host, where the encoder needs the
    # cores; a GPU host, where decoding is the bound, wants about its cores per worker process.
    decode_threads: int = Field(default=1, ge=1, le=64)
    # Torch threads of each worker pool process; default: the machine's cores shared out.
    torch_threads: int | None = Field(default=None, ge=1)
    # Port of a worker's Prometheus /metrics (its pool processes summed); 0 = off.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)

    # Clients (``hotrefresh ingest``, ``hotrefresh upgrade ...``): the API they talk to. They send
    # ``admin_token`` above as their bearer token.
    api_url: str = "http://127.0.0.1:8000"

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        if self.env == "production" and self.admin_token == PLACEHOLDER_TOKEN:
            raise ValueError("HOTREFRESH_ADMIN_TOKEN must be set to a real secret when HOTREFRESH_ENV=production")
        image_store_location(self.image_store)  # a bad URL refused at start-up, with the reason
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise ValueError("HOTREFRESH_INDEX_BACKEND=milvus needs HOTREFRESH_MILVUS_URI (e.g. http://milvus:19530)")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hotrefresh.db').resolve()}"

    @property
    def images_path(self) -> Path:
        """The local image store's folder (``file://`` or unset ``image_store``)."""
        scheme, location, _ = image_store_location(self.image_store)
        if scheme == "file":
            return Path(location)
        return self.image_root or self.data_dir / "images"

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def snapshots_path(self) -> Path:
        return self.snapshot_dir or self.data_dir / "snapshots"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"


def image_store_location(url: str) -> tuple[str, str, str]:
    """``HOTREFRESH_IMAGE_STORE`` taken apart: ("local", "", "") when unset, ("file", path, "")
    for ``file:///path``, ("s3", bucket, prefix) for ``s3://bucket/prefix``; ValueError naming
    what is wrong otherwise."""
    if not url:
        return "local", "", ""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"HOTREFRESH_IMAGE_STORE={url!r}: no query or fragment expected")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"HOTREFRESH_IMAGE_STORE={url!r}: a file URL takes an absolute path, file:///path")
        return "file", unquote(parts.path), ""
    if parts.scheme == "s3":
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"HOTREFRESH_IMAGE_STORE={url!r}: {bucket!r} is not a bucket name (s3://bucket/prefix)")
        if "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
            raise ValueError(f"HOTREFRESH_IMAGE_STORE={url!r}: the prefix must be plain path segments")
        return "s3", bucket, prefix
    raise ValueError(f"HOTREFRESH_IMAGE_STORE={url!r}: expected file:///path or s3://bucket/prefix")


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


@lru_cache
def get_settings() -> Settings:
    return Settings()
