"""A thin tokenizer over `tokenizers.Tokenizer` (tokenizer.json) for local tiers.

Why not `transformers.AutoTokenizer`: on 2 cores importing transformers and building the
Gemma tokenizer through it takes ~10 s, the raw Rust tokenizer loads in ~1 s and encodes
identically (the saved tokenizer.json carries the BOS post-processor), so the serving
path (CTranslate2) never imports transformers at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from routenlp.errors import ConfigError


class LocalTokenizer:
    """encode / decode / id<->token plus the special tokens a tier needs."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"{d} has no tokenizer.json (a local model needs a fast tokenizer)")
        self.tk = Tokenizer.from_file(str(path))
        cfg = _read_json(d / "tokenizer_config.json")
        gen = _read_json(d / "generation_config.json")
        self.bos_token_id = self._special_id(cfg.get("bos_token"))
        self.pad_token_id = self._special_id(cfg.get("pad_token"))
        eos: set[int] = set()
        eid = self._special_id(cfg.get("eos_token"))
        if eid is not None:
            eos.add(eid)
        g = gen.get("eos_token_id")
        for v in g if isinstance(g, list) else [g]:
            if isinstance(v, int):
                eos.add(v)
        self.eos_token_ids: set[int] = eos

    def _special_id(self, token: Any) -> int | None:
        if isinstance(token, dict):  # {"content": "<eos>", ...} in older configs
            token = token.get("content")
        if not isinstance(token, str):
            return None
        return self.tk.token_to_id(token)

    def get_vocab(self) -> dict[str, int]:
        return self.tk.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tk.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            tok = self.tk.id_to_token(int(i))
            if tok is None:
                raise ConfigError(f"token id {i} is outside the tokenizer's vocabulary")
            out.append(tok)
        return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
