"""Service settings, read from RNNLAB_* environment variables (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNNLAB_", env_file=".env", extra="ignore")

    models_dir: Path = Field(REPO_ROOT / "models" / "weights", description="folder of <name>.json + <name>.safetensors")
    static_dir: Path = Field(REPO_ROOT / "static", description="the demo page, served at /")
    models_watch_s: float = Field(2.0, ge=0, description="look for new, changed or removed manifests in models_dir "
                                                         "this often and serve them without a restart; 0 = never")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto takes CUDA when available")
    max_upload_bytes: int = Field(4 * 1024 * 1024, gt=0, description="request body limit; larger gets 413")
    max_image_pixels: int = Field(40_000_000, gt=0, description="decoded width*height limit; larger gets 413")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = half the usable CPUs, 1 to 4")
    log_level: str = "info"
    # Serving under load (app/batching.py, app/observability.py; docs/serving.md).
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per log line")
    batch_max_size: int = Field(32, ge=1, description="most requests one forward pass takes")
    batch_max_wait_ms: float = Field(8.0, ge=0, description="longest wait for a batch to fill, only while more "
                                                            "requests are being preprocessed (docs/serving.md)")
    queue_size: int = Field(64, ge=1, description="requests in flight per model (decoding, queued, running); "
                                                  "more get 503 overloaded + Retry-After")
    request_timeout_s: float = Field(10.0, gt=0, description="longest wait in a model's queue before its "
                                                             "forward pass starts; then 503 timeout")
    upload_timeout_s: float = Field(30.0, gt=0, description="longest time to receive a request body; then 408")
    preprocess_threads: int = Field(0, ge=0, description="threads decoding images at once; 0 = 2 x usable CPUs")
    malloc_trim_interval_s: float = Field(1.0, ge=0, description="after activity, hand freed heap memory back to "
                                                                 "the OS this often (glibc); 0 = never (app/memory.py)")
    metrics: bool = Field(True, description="serve GET /metrics (Prometheus)")
    bench_routes: bool = Field(False, description="add GET /bench/noop, a do-nothing route for bench/load.py")


@lru_cache
def get_settings() -> Settings:
    return Settings()
