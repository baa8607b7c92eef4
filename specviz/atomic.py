"""Atomic file writes: a temp file beside the target, then a rename, so a reader (or a rerun after a
crash) never sees half a file. The lowest layer of the package: it imports nothing of specviz."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _temp_beside(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results and weights are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with _temp_beside(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    return path


def atomic_save(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """safetensors, atomically (tensors are made contiguous first)."""
    from safetensors.torch import save_file

    path = Path(path)
    with _temp_beside(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    import torch

    path = Path(path)
    with _temp_beside(path) as tmp:
        torch.save(obj, tmp)
    return path
