"""`routenlp serve --ray`: the gateway and the local tiers as Ray Serve deployments.

The gateway replicas run the SAME FastAPI app (`server.gateway.create_app`) over the same
`ServingState`/`Cascade` as `routenlp serve`; Ray Serve only wraps it (`serve.ingress`,
built on each replica). What changes is where tiers run: a `local` or `classifier` tier
(or any tier named under `scale.tiers`) is its own deployment with its own replicas, and
the gateway's Cascade calls it through a `RemoteTier` (a deployment handle behind the
gateway's usual circuit breaker). Remote tiers (`openai_compat`) are called directly.

Every gateway replica logs to the one store at `store.url` (PostgreSQL for more than one
replica) with pooled connections, retried transient errors and idempotent request ids.
Router/threshold artifacts reach every replica through Serve's `user_config`: each replica
loads them in `reconfigure`. Re-deploying with new paths (`routenlp serve --ray` again, or
`deploy(...)`) is a rolling update with `serve.run` (Ray 2.60 versions imperative deploys
itself, so replicas are replaced one by one while the others keep answering); with
Serve's declarative `serve deploy` a user_config-only change calls `reconfigure` on the
live replicas. Either way an in-flight request finishes on the state it started with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from routenlp.config import DeploymentScale, EnsembleConfig
from routenlp.errors import ConfigError
from routenlp.scale import connect, require_ray
from routenlp.tiers.base import BaseTier, Generation, Request

log = logging.getLogger("routenlp.scale")

APP_NAME = "routenlp"
LOCAL_KINDS = ("local", "classifier")


def deployed_tiers(config: EnsembleConfig) -> list[str]:
    """Tiers that get their own deployment: local model kinds plus any in scale.tiers."""
    return [t.name for t in config.tiers if t.kind in LOCAL_KINDS or t.name in config.scale.tiers]


def deployment_options(scale: DeploymentScale, config: EnsembleConfig) -> dict[str, Any]:
    """`serve.deployment(...).options(...)` keyword arguments for one deployment."""
    s = config.scale
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": scale.num_cpus},
        "max_ongoing_requests": scale.max_ongoing_requests,
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": s.health_check_timeout_s,
        "graceful_shutdown_timeout_s": s.graceful_shutdown_timeout_s,
    }
    if scale.autoscaling is not None:
        a = scale.autoscaling
        opts["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = scale.replicas
    return opts


class RemoteTier(BaseTier):
    """A tier served by its own Ray Serve deployment; never raises (a dead or slow
    replica is an error Generation, so the Cascade escalates as for any tier failure)."""

    def __init__(self, config: Any, handle: Any) -> None:
        super().__init__(config)
        self.handle = handle

    def _call(self, method: str, payload: Any, n: int) -> list[Generation]:
        t0 = time.perf_counter()
        try:
            out = getattr(self.handle, method).remote(payload).result(
                timeout_s=self.config.timeout_s * max(n, 1)
            )
            return list(out) if isinstance(out, list) else [out]
        except Exception as err:  # noqa: BLE001 - recorded, the cascade escalates
            msg = f"{self.name}: tier deployment failed: {type(err).__name__}: {err}"
            elapsed = time.perf_counter() - t0
            return [Generation(text="", error=msg.splitlines()[0], latency_s=elapsed)] * n

    def generate(self, request: Request) -> Generation:
        return self._call("generate", request, 1)[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        return self._call("generate_batch", list(requests), len(requests))


class TierReplica:
    """One replica of a tier deployment: the tier is built (its model loaded) once."""

    def __init__(self, config: EnsembleConfig, tier_name: str) -> None:
        from routenlp.tiers.base import build_tier

        self.name = tier_name
        self.tier = build_tier(config.tier(tier_name), config)

    def generate(self, request: Request) -> Generation:
        return self.tier.generate(request)

    def generate_batch(self, requests: list[Request]) -> list[Generation]:
        return list(self.tier.generate_batch(requests))

    def check_health(self) -> None:
        """Serve's health probe: a replica whose tier was closed is replaced."""
        if self.tier is None:
            raise RuntimeError(f"tier {self.name} is not loaded")


class GatewayReplica:
    """One gateway replica: ServingState + Store built here, the app by the gateway's own
    factory in `__serve_build_asgi_app__` (Serve runs its lifespan: the log writer)."""

    def __init__(
        self,
        config: EnsembleConfig,
        tier_handles: Mapping[str, Any],
    ) -> None:
        from routenlp.server.breaker import CircuitBreaker
        from routenlp.server.runtime import GuardedTier, Runtime, ServingState, build_tiers
        from routenlp.store import PoolSettings, Store

        self.config = config
        s = config.server
        tiers = {
            name: GuardedTier(
                RemoteTier(config.tier(name), handle),
                CircuitBreaker(s.breaker_failures, s.breaker_reset_s),
            )
            for name, handle in tier_handles.items()
        }
        local = [t.name for t in config.tiers if t.name not in tiers]
        if local:
            sub = config.model_copy(update={"tiers": [config.tier(n) for n in local]})
            tiers.update(build_tiers(sub))
        tiers = {t.name: tiers[t.name] for t in config.tiers}  # config order
        sc = config.scale
        pool = PoolSettings(pool_size=sc.store_pool_size, max_overflow=sc.store_max_overflow,
                            retries=sc.store_retries)
        # Idempotent logging: a client retrying a request id after a replica died must
        # not get a second row nor an error.
        self.store = Store(config.store.url, pool=pool, duplicate_requests="skip")
        # The config's own artifacts first; Serve then calls reconfigure() with the
        # deployed user_config (artifact paths are not constructor arguments, so changing
        # them reconfigures live replicas instead of replacing them).
        self.artifacts: dict[str, Any] = {}
        state = ServingState.load(config, tiers=tiers, store=self.store)
        self.runtime = Runtime(state, store=self.store)
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        from routenlp.server.gateway import create_app, with_limits

        self._app = create_app(self.config, self.runtime, store=self.store)
        return with_limits(self._app, self.config)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """New artifact paths (or a new `reload` counter) from a re-deploy: reload here.
        A bad artifact raises and the old state keeps serving (Runtime.reload)."""
        wanted = dict(user_config or {})
        if wanted == self.artifacts:
            return
        self.runtime.reload(router=wanted.get("router") or None,
                            thresholds=wanted.get("thresholds") or None)
        self.artifacts = wanted

    def check_health(self) -> None:
        """Serve's health probe: the log writer must be alive, else requests cannot be
        logged and the replica is replaced."""
        writer = getattr(getattr(self._app, "state", None), "holder", {}).get("writer")
        thread = getattr(writer, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the request log writer has stopped")


def build_app(
    config: EnsembleConfig,
    *,
    router: str | Path | None = None,
    thresholds: str | Path | None = None,
    reload: int = 0,
) -> Any:
    """The Ray Serve application (bound deployments) for `config`."""
    require_ray("serve")
    from ray import serve

    artifacts = {
        "router": str(Path(router).resolve()) if router else (config.router.path or ""),
        "thresholds": (
            str(Path(thresholds).resolve()) if thresholds else (config.cascade.thresholds or "")
        ),
        "reload": int(reload),
    }
    handles = {}
    for name in deployed_tiers(config):
        scale = config.scale.tiers.get(name, DeploymentScale())
        dep = serve.deployment(TierReplica).options(
            name=f"tier-{name}", **deployment_options(scale, config)
        )
        handles[name] = dep.bind(config, name)
    gateway = serve.deployment(serve.ingress()(GatewayReplica)).options(
        name="gateway", user_config=artifacts,
        **deployment_options(config.scale.gateway, config),
    )
    return gateway.bind(config, handles)


def deploy(
    config: EnsembleConfig,
    *,
    address: str | None = None,
    router: str | Path | None = None,
    thresholds: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    reload: int = 0,
) -> str:
    """Deploy (or update) the RouteNLP app on the cluster; returns the base URL.

    Re-deploying with other artifact paths rolls the gateway replicas onto them."""
    if config.store.url.startswith("sqlite") and _replica_count(config) > 1:
        log.warning("store.url is SQLite: several gateway replicas on different nodes "
                    "cannot share it; use PostgreSQL for a Ray cluster")
    for p in (router, thresholds):
        if p and not Path(p).exists():
            raise ConfigError(f"artifact not found: {p}")
    connect(address)
    require_ray("serve")
    from ray import serve

    host = host or config.scale.host
    port = port or config.scale.port
    serve.start(http_options={"host": host, "port": port})
    app = build_app(config, router=router, thresholds=thresholds, reload=reload)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}/v1"


def _replica_count(config: EnsembleConfig) -> int:
    g = config.scale.gateway
    return g.autoscaling.max_replicas if g.autoscaling else g.replicas


def serve_ray(
    config: EnsembleConfig,
    *,
    address: str | None = None,
    router: str | Path | None = None,
    thresholds: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """The `routenlp serve --ray` verb: deploy, then wait for Ctrl-C.

    On a cluster (`--address`) the app keeps running after Ctrl-C (remove it with
    `serve shutdown`); with a local Ray started here, Ctrl-C shuts it down."""
    from routenlp.cli_utils import err_console

    started_here = address is None
    url = deploy(config, address=address, router=router, thresholds=thresholds,
                 host=host, port=port)
    g = config.scale.gateway
    reps = (f"{g.autoscaling.min_replicas}-{g.autoscaling.max_replicas} (autoscaling)"
            if g.autoscaling else str(g.replicas))
    err_console.print(f"RouteNLP gateway on Ray Serve at {url} ({reps} gateway replicas; "
                      f"tier deployments: {', '.join(deployed_tiers(config)) or 'none'})")
    import ray

    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        if started_here:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        else:
            err_console.print("left running on the cluster; remove it with `serve shutdown`")


def serve_cli(
    config_path: Path,
    *,
    router: Path | None,
    thresholds: Path | None,
    host: str | None,
    port: int | None,
    address: str | None,
    ray: bool,
    workers: int | None,
) -> None:
    """Option checks of `routenlp serve --ray` (clear errors, exit 2), then serve_ray."""
    from routenlp.config import load_config
    from routenlp.errors import RouteNLPError

    if not ray:
        raise RouteNLPError("--address is only used with --ray", hint="add --ray")
    if workers is not None:
        raise RouteNLPError("--workers does not apply with --ray",
                            hint="set scale.gateway.replicas (or autoscaling) in the config")
    cfg = load_config(config_path)
    serve_ray(cfg, address=address, router=router, thresholds=thresholds, host=host, port=port)
