"""Converted-model manifests, checksums and the cross-process conversion lock.

A converted model directory is only trusted when its `manifest.json` says what it was
built from (source sha256, engine, quantisation, tool versions) and every file it lists
still hashes to the recorded sha256. Anything else (missing manifest, another source,
an edited or truncated file, a format bump) means "convert again", never "load anyway".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

MANIFEST_NAME = "manifest.json"
# Bump when the converted layout or conversion recipe changes: old caches become stale.
FORMAT_VERSION = 1
_CHUNK = 4 * 1024 * 1024

# sha256 results keyed by (path, size, mtime_ns): a file hashed once per process is not
# hashed again until it changes (reloading a tier costs a stat, not a 300 MB read).
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


class Manifest(BaseModel):
    """What a converted model directory holds and how it was made."""

    format_version: int = FORMAT_VERSION
    name: str
    engine: str = Field(description="inference engine the files are for, e.g. ctranslate2")
    quantization: str | None = None
    source: str = Field(description="where the weights came from (file, package or directory)")
    source_sha256: str
    adapter_sha256: str | None = None
    files: dict[str, str] = Field(description="relative path -> sha256 of every converted file")
    versions: dict[str, str] = Field(default_factory=dict)
    context_length: int | None = None
    convert_seconds: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    extra: dict[str, Any] = Field(default_factory=dict)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, memoised per process by (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    hit = _HASH_CACHE.get(key)
    if hit is not None:
        return hit
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    out = digest.hexdigest()
    _HASH_CACHE[key] = out
    return out


def sha256_tree(root: str | Path, *, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> dict[str, str]:
    """sha256 of every regular file under `root` (relative POSIX paths, sorted)."""
    base = Path(root)
    out: dict[str, str] = {}
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base).as_posix()
        if p.is_file() and rel not in exclude and not p.name.startswith(".lock"):
            out[rel] = sha256_file(p)
    return out


def tree_digest(files: dict[str, str]) -> str:
    """One digest for a set of file hashes (content identity of a directory)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode())
        h.update(b"\0")
        h.update(files[rel].encode())
        h.update(b"\n")
    return h.hexdigest()


def read_manifest(model_dir: str | Path) -> Manifest | None:
    """The directory's manifest, or None when missing or unreadable."""
    p = Path(model_dir) / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        return Manifest.model_validate_json(p.read_text())
    except (ValidationError, ValueError, OSError):
        return None


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    p = Path(model_dir) / MANIFEST_NAME
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)
    return p


def check_manifest(
    model_dir: str | Path,
    *,
    source_sha256: str | None = None,
    engine: str | None = None,
    quantization: str | None = None,
    adapter_sha256: str | None = None,
    verify_files: bool = True,
    only: tuple[str, ...] | None = None,
) -> tuple[Manifest | None, str | None]:
    """(manifest, None) when the directory is usable, else (manifest or None, why not).

    `source_sha256` / `engine` / `quantization` / `adapter_sha256`, when given, must match
    what the manifest recorded; with `verify_files` every listed file is re-hashed
    (restricted to paths starting with one of `only` when given: the engine's files).
    """
    d = Path(model_dir)
    m = read_manifest(d)
    if m is None:
        return None, "no manifest" if d.exists() else "not converted"
    if m.format_version != FORMAT_VERSION:
        return m, f"format version {m.format_version} != {FORMAT_VERSION}"
    if source_sha256 is not None and m.source_sha256 != source_sha256:
        return m, "source changed"
    if engine is not None and m.engine != engine:
        return m, f"engine {m.engine} != {engine}"
    if quantization is not None and m.quantization != quantization:
        return m, f"quantization {m.quantization} != {quantization}"
    if adapter_sha256 is not None and m.adapter_sha256 != adapter_sha256:
        return m, "adapter changed"
    if not m.files:
        return m, "manifest lists no files"
    for rel, digest in m.files.items():
        if only is not None and not rel.startswith(only):
            continue
        f = d / rel
        if not f.is_file():
            return m, f"missing file {rel}"
        if verify_files and sha256_file(f) != digest:
            return m, f"checksum mismatch for {rel}"
    return m, None


@contextlib.contextmanager
def file_lock(path: str | Path, *, timeout_s: float = 3600.0) -> Iterator[None]:
    """Exclusive inter-process lock (flock) on `path`; waits up to `timeout_s`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for lock {p}")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def new_temp_dir(final: Path) -> Path:
    """A fresh sibling of `final` on the same filesystem (so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished temp dir into place, replacing an old `final` if any.

    Readers see either the old complete directory or the new one: the old one is renamed
    aside first (one rename), then the new one renamed in (one rename), then removed.
    """
    old: Path | None = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(parent: Path, name: str, *, older_than_s: float = 6 * 3600) -> None:
    """Remove temp/old dirs of `name` left by crashed conversions (only old ones)."""
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.iterdir():
        if p.is_dir() and (p.name.startswith(f".tmp-{name}-") or p.name.startswith(f".old-{name}-")):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass
