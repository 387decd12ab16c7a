"""The router artifact: a directory with `weights.safetensors`, `meta.json` and
`report.json`, versioned in the store's artifact table.

meta.json carries everything needed to use the weights correctly (tier and task order,
taus, costs, serving mask, encoder and embedding backend) and to audit them (config hash,
label definition, hyper-parameters, metrics, creation time), so a router trained for one
ensemble cannot silently be loaded into another.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from routenlp.config import EnsembleConfig
from routenlp.errors import ConfigError, DataError

ARTIFACT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
REPORT_FILE = "report.json"
KNN_FILE = "knn.safetensors"  # train embeddings + success targets of the kNN estimator
WEIGHT_KEYS = ("task_emb", "w1", "b1", "w2", "b2")
SUCCESS_KEYS = ("ws", "bs")  # optional: the per-tier success head
OPTIONAL_KEYS = ("s_prior",)  # optional: per-task success-rate logits the success head adds to


class RouterMeta(BaseModel):
    """meta.json of a router artifact."""

    version: int = ARTIFACT_VERSION
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    tiers: list[str]
    tasks: list[str]
    task_index: dict[str, int]
    taus: dict[str, float]
    serving: dict[str, list[bool]] = Field(description="task -> per-tier serving flags")
    tier_costs: list[float]
    cost_source: str
    cost_norm: list[float]
    config_hash: str
    config_name: str = ""
    label_definition: str
    encoder: str
    embedding_backend: str
    embedding_dim: int
    max_length: int
    hyper: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    decision: dict[str, Any] = Field(
        default_factory=dict,
        description="default decision rule and knob (train.DecisionPolicy); empty = label rule, b = 0",
    )
    featurizer: dict[str, Any] = Field(
        default_factory=dict, description="router.features.PromptFeaturizer (shared blocks stripped)"
    )
    truncation: str = Field("head", description="which end of a long text the encoder keeps")
    success_calibration: dict[str, Any] | None = Field(
        None, description="router.success.SuccessCalibration (blend + isotonic maps); None = raw head"
    )


def save_artifact(
    out_dir: str | Path,
    weights: dict[str, np.ndarray],
    meta: RouterMeta,
    *,
    knn: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write weights (+ the kNN bank) + meta into `out_dir` (created); files are replaced
    atomically, meta last, so a reader never pairs new meta with old weights."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if knn is not None:
        tmp_knn = out / (KNN_FILE + ".tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in knn.items()}, str(tmp_knn))
        tmp_knn.replace(out / KNN_FILE)
    elif (out / KNN_FILE).exists():
        (out / KNN_FILE).unlink()
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    if missing:
        raise ValueError(f"router weights lack {missing}")
    tmp = out / (WEIGHTS_FILE + ".tmp")
    keys = WEIGHT_KEYS + tuple(k for k in SUCCESS_KEYS + OPTIONAL_KEYS if k in weights)
    save_file({k: np.ascontiguousarray(weights[k], dtype=np.float32) for k in keys}, str(tmp))
    tmp.replace(out / WEIGHTS_FILE)
    tmp_meta = out / (META_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    tmp_meta.replace(out / META_FILE)
    return out


def load_artifact(
    path: str | Path, config: EnsembleConfig | None = None
) -> tuple[dict[str, np.ndarray], RouterMeta]:
    """Read an artifact; with a config, check that its tiers match the router's tiers."""
    from safetensors.numpy import load_file

    p = Path(path)
    if not (p / META_FILE).exists() or not (p / WEIGHTS_FILE).exists():
        raise DataError(
            f"{p} is not a router artifact (expected {META_FILE} and {WEIGHTS_FILE})",
            hint="train one with `routenlp train-router ... --out DIR`",
        )
    try:
        meta = RouterMeta.model_validate_json((p / META_FILE).read_text())
    except ValidationError as err:
        raise DataError(f"{p / META_FILE}: invalid router metadata: {err.errors()[0]['msg']}") from None
    if meta.version > ARTIFACT_VERSION:
        raise DataError(
            f"{p} is a version {meta.version} router artifact; this RouteNLP reads up to "
            f"version {ARTIFACT_VERSION}",
            hint="upgrade routenlp or retrain the router",
        )
    weights = load_file(str(p / WEIGHTS_FILE))
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    if missing:
        raise DataError(f"{p / WEIGHTS_FILE}: missing tensors {missing}")
    has_success = [k in weights for k in SUCCESS_KEYS]
    if any(has_success) and not all(has_success):
        raise DataError(f"{p / WEIGHTS_FILE}: incomplete success head (need both {list(SUCCESS_KEYS)})")
    if meta.decision.get("rule") == "success" and not all(has_success):
        raise DataError(f"{p}: meta.json asks for the success rule but the weights have no success head")
    if meta.success_calibration is not None:
        if not (p / KNN_FILE).exists():
            raise DataError(f"{p}: meta.json has a success calibration but {KNN_FILE} is missing")
        weights.update(load_file(str(p / KNN_FILE)))
    if config is not None:
        check_tiers(meta, config, p)
    return weights, meta


def check_tiers(meta: RouterMeta, config: EnsembleConfig, where: str | Path = "router") -> None:
    """The router's output k means tier k of the config: the lists must be identical."""
    if list(meta.tiers) != config.tier_names:
        raise ConfigError(
            f"router {where} was trained for tiers {meta.tiers} but the config has tiers "
            f"{config.tier_names}",
            hint="retrain the router with this config (`routenlp train-router`)",
        )


def artifact_sha256(path: str | Path) -> str:
    """Content hash of the weights and meta (what the store records as the version's hash)."""
    h = hashlib.sha256()
    p = Path(path)
    for name in (WEIGHTS_FILE, META_FILE):
        h.update((p / name).read_bytes())
    return h.hexdigest()


def register_artifact(
    path: str | Path, *, store_url: str, config_hash: str, metadata: dict[str, Any] | None = None
) -> int:
    """Register the router directory as the active `router` artifact in the store."""
    from routenlp.store import Store  # lazy: only `--register` needs the store

    store = Store(store_url)
    return store.register_artifact(
        "router",
        str(Path(path).resolve()),
        sha256=artifact_sha256(path),
        config_hash=config_hash,
        metadata=metadata,
    )
