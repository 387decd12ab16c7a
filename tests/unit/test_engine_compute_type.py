"""`compute_type: auto`: int8 only where the CPU runs int8 on a dot-product instruction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from routenlp.models import engine
from routenlp.models.engine import int8_dot_product, resolve_compute_type

ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
ZEN2 = "flags\t\t: fpu sse2 avx2 fma bmi2\n"
ALDER_LAKE = "flags\t\t: fpu sse2 avx2 avx_vnni\n"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each case reads its own cpuinfo and environment (the answer is cached per process)."""
    monkeypatch.setattr(engine.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    int8_dot_product.cache_clear()
    yield
    int8_dot_product.cache_clear()


def cpuinfo(tmp_path: Path, text: str) -> str:
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\n" + text)
    return str(p)


def test_vnni_flags_decide_on_x86(tmp_path: Path) -> None:
    assert int8_dot_product(cpuinfo(tmp_path, ZEN4)) is True
    int8_dot_product.cache_clear()
    assert int8_dot_product(cpuinfo(tmp_path, ALDER_LAKE)) is True
    int8_dot_product.cache_clear()
    assert int8_dot_product(cpuinfo(tmp_path, ZEN2)) is False


def test_unknown_when_it_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert int8_dot_product(str(tmp_path / "missing")) is None
    int8_dot_product.cache_clear()
    assert int8_dot_product(cpuinfo(tmp_path, "model name\t: x\n")) is None
    int8_dot_product.cache_clear()
    monkeypatch.setattr(engine.platform, "machine", lambda: "riscv64")
    assert int8_dot_product(cpuinfo(tmp_path, ZEN4)) is None


def test_arm64_always_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.platform, "machine", lambda: "aarch64")
    assert int8_dot_product(cpuinfo(tmp_path, "")) is True


def test_onednn_isa_cap_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run capped below VNNI computes int8 as a CPU without it does."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert int8_dot_product(cpuinfo(tmp_path, ZEN4)) is False
    int8_dot_product.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert int8_dot_product(cpuinfo(tmp_path, ZEN4)) is True


@pytest.mark.parametrize(("dot", "expected"), [(True, "int8"), (None, "int8"), (False, "float32")])
def test_auto_resolves_by_the_instruction(monkeypatch: pytest.MonkeyPatch, dot: bool | None, expected: str) -> None:
    monkeypatch.setattr(engine, "int8_dot_product", lambda: dot)
    chosen, why = resolve_compute_type("auto")
    assert chosen == expected and why
    assert resolve_compute_type("int8") == ("int8", "set in the tier's options")
    assert resolve_compute_type("float32")[0] == "float32"
