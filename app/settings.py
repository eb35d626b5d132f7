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
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto takes CUDA when available")
    max_upload_bytes: int = Field(4 * 1024 * 1024, gt=0, description="request body limit; larger gets 413")
    max_image_pixels: int = Field(40_000_000, gt=0, description="decoded width*height limit; larger gets 413")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = min(4, CPUs)")
    log_level: str = "info"


@lru_cache
def get_settings() -> Settings:
    return Settings()
