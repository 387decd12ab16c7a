"""CLI verbs of the server area: `routenlp serve` (the gateway) and `routenlp bench gateway`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer

from routenlp.cli_utils import err_console, friendly_errors
from routenlp.config import load_config
from routenlp.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def check_log_level(value: str, option: str = "--log-level") -> str:
    """A uvicorn log level, or a clear ConfigError naming the option (exit 2)."""
    level = value.lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{option}: unknown log level {value!r}; choose one of "
                          f"{', '.join(LOG_LEVELS)}")
    return level


def serve(
    config: Path = typer.Option(..., "--config", "-c", help="ensemble config YAML"),
    router: Optional[Path] = typer.Option(None, "--router", help="trained router directory"),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="per-tier thresholds JSON (or a policy JSON)"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="certified policy JSON from `routenlp calibrate` (the default rule; default: cascade.policy)"),
    host: Optional[str] = typer.Option(None, "--host", help="default: server.host"),
    port: Optional[int] = typer.Option(None, "--port", "-p", min=1, max=65535,
                                       help="default: server.port"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=64,
                                          help="uvicorn worker processes (default: server.workers)"),
    log_level: str = typer.Option("warning", "--log-level"),
    ray: bool = typer.Option(False, "--ray", help="deploy on Ray Serve (extra: routenlp[ray])"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster address with --ray"),
) -> None:
    """Serve the routed, OpenAI-compatible gateway (model=routenlp routes; a tier name pins)."""
    if policy is not None and thresholds is not None:
        from routenlp.errors import DataError

        raise DataError("--policy and --thresholds are two accept rules: give one")
    thresholds = policy or thresholds
    if ray or address:  # hook: Ray Serve deployment (routenlp.scale.serve)
        from routenlp.scale.serve import serve_cli

        serve_cli(config, router=router, thresholds=thresholds, host=host, port=port,
                  address=address, ray=ray, workers=workers)
        return
    import uvicorn

    from routenlp.server import gateway
    from routenlp.server.runtime import ServingState

    level = check_log_level(log_level)
    cfg = load_config(config)
    host = host or cfg.server.host
    port = port or cfg.server.port
    n = workers or cfg.server.workers
    logging.basicConfig(level=logging.INFO if level in ("info", "debug", "trace") else
                        logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # load once here so a bad artifact fails now with a clear message, in every mode
    state = ServingState.load(cfg, router=router, thresholds=thresholds)
    err_console.print(
        f"RouteNLP gateway at http://{host}:{port}/v1 ({n} worker{'s' if n > 1 else ''}); "
        f"mode {state.mode}" + (f", missing: {', '.join(state.missing)}" if state.missing else "")
    )
    common = dict(host=host, port=port, log_level=level, loop="uvloop", http="httptools",
                  backlog=2048, access_log=level in ("info", "debug", "trace"),
                  timeout_graceful_shutdown=10)
    if n == 1:
        app = gateway.with_limits(gateway.create_app(cfg, state), cfg)
        uvicorn.run(app, **common)  # type: ignore[arg-type]
        return
    os.environ[gateway.ENV_CONFIG] = str(config.resolve())
    os.environ[gateway.ENV_ROUTER] = str(router.resolve()) if router else ""
    os.environ[gateway.ENV_THRESHOLDS] = str(thresholds.resolve()) if thresholds else ""
    uvicorn.run("routenlp.server.gateway:create_app_from_env", factory=True, workers=n,
                **common)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.command("serve")(friendly_errors(serve))
    import importlib.util

    if importlib.util.find_spec("routenlp.server.bench") is not None:
        from routenlp.server import bench

        bench.register(app)
