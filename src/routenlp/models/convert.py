"""Weight conversions: GGUF -> HF safetensors -> CTranslate2 int8, and LoRA merging.

Why these steps: the wheels ship llama.cpp GGUF files, but the fast CPU engine we serve
with (CTranslate2, measured 3-5x faster than transformers fp32 on 2 cores) converts from
HF checkpoints. transformers reads GGUF by de-quantising to fp32; its `save_pretrained`
refuses a GGUF-loaded model until the GGUF "quantizer" marker is dropped, after which the
saved checkpoint reloads in < 1 s with identical logits. LoRA adapters from the closed
loop are merged into the fp32 HF weights (PEFT `merge_and_unload`) and converted the same
way, so a distilled tier is served by the same engine as the base model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from routenlp.errors import TierError
from routenlp.models.loading import HF_LOAD_LOCK, hf_classes, load_pretrained

# Tokenizer/config files copied next to the engine weights so the engine dir stands alone.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
)
CT2_QUANTIZATION = "int8"


def tool_versions() -> dict[str, str]:
    """Versions recorded in manifests (a CTranslate2 major bump invalidates caches)."""
    import importlib.metadata as md

    out: dict[str, str] = {}
    for pkg in ("transformers", "ctranslate2", "torch", "peft", "gguf", "routenlp"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def _strip_gguf_quantizer(model: Any) -> None:
    """Make a GGUF-loaded model savable: drop the quantizer marker transformers attaches."""
    if getattr(model, "hf_quantizer", None) is not None:
        try:
            model.hf_quantizer = None
        except AttributeError:
            delattr(model, "hf_quantizer")
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            try:
                delattr(cfg, "quantization_config")
            except AttributeError:
                cfg.quantization_config = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file's metadata three times (config, tokenizer, weights),
    field by field in Python: on Gemma 3's 262k-token vocabulary that is about 12 s a parse
    on 2 cores. Inside this block every `gguf.GGUFReader(path)` of the same file returns one
    shared reader (transformers only reads from it). Callers hold HF_LOAD_LOCK: the patch
    is process-wide."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original
        readers.clear()


def gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint into an fp32 HF directory (weights + tokenizer)."""
    import torch
    AutoModelForCausalLM, AutoTokenizer = hf_classes("AutoModelForCausalLM", "AutoTokenizer")

    gguf_path = Path(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    src_dir, fname = str(gguf_path.parent), gguf_path.name
    with HF_LOAD_LOCK, gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname, local_files_only=True)
        model = load_pretrained(
            AutoModelForCausalLM, src_dir, gguf_file=fname, dtype=torch.float32, local_files_only=True
        )
    _strip_gguf_quantizer(model)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    del model
    return out_dir


def merge_lora(base_hf_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Merge a PEFT LoRA adapter into fp32 HF weights and save the merged checkpoint."""
    import torch
    with HF_LOAD_LOCK:  # peft imports transformers: first import under the lock
        from peft import PeftModel
    AutoModelForCausalLM, AutoTokenizer = hf_classes("AutoModelForCausalLM", "AutoTokenizer")

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TierError(
            f"adapter {adapter_dir} is not a PEFT adapter directory (no adapter_config.json)"
        )
    base = load_pretrained(
        AutoModelForCausalLM, str(base_hf_dir), dtype=torch.float32, local_files_only=True
    )
    merged = load_pretrained(PeftModel, base, str(adapter_dir), is_trainable=False)
    merged = merged.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    tok_src = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else Path(base_hf_dir)
    AutoTokenizer.from_pretrained(str(tok_src), local_files_only=True).save_pretrained(str(out_dir))
    del merged, base
    return out_dir


def hf_to_ct2(hf_dir: Path, out_dir: Path, *, quantization: str = CT2_QUANTIZATION) -> Path:
    """Convert an HF causal-LM directory to CTranslate2 (+ tokenizer files beside it)."""
    import ctranslate2

    try:
        with HF_LOAD_LOCK:  # the converter loads the model with transformers
            ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
                str(out_dir), quantization=quantization, force=True
            )
    except (ValueError, NotImplementedError) as err:
        raise TierError(
            f"CTranslate2 cannot convert {hf_dir}: {err}",
            hint="set `options: {engine: transformers}` on the tier to serve it with transformers",
        ) from err
    copy_tokenizer_files(hf_dir, out_dir)
    cfg = Path(hf_dir) / "config.json"
    if cfg.is_file():
        shutil.copyfile(cfg, out_dir / "hf_config.json")
    return out_dir


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        f = Path(src) / name
        if f.is_file():
            shutil.copyfile(f, Path(dst) / name)


def context_length(hf_dir: Path) -> int | None:
    """max_position_embeddings from an HF config.json (None if absent)."""
    for name in ("config.json", "hf_config.json"):
        p = Path(hf_dir) / name
        if p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except json.JSONDecodeError:
                return None
            cfg = cfg.get("text_config", cfg)
            value = cfg.get("max_position_embeddings")
            return int(value) if value else None
    return None


def is_ct2_dir(path: Path) -> bool:
    """A directory that already holds a CTranslate2 model (model.bin + vocabulary)."""
    p = Path(path)
    return (p / "model.bin").is_file() and any(
        (p / n).is_file() for n in ("vocabulary.json", "vocabulary.txt", "shared_vocabulary.json")
    )


def is_hf_dir(path: Path) -> bool:
    """A directory with an HF config and safetensors/bin weights."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    return any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin"))
