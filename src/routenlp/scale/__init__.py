"""Scale-out on a Ray cluster: Ray Data labelling (label.py) and Ray Serve deployment of
the gateway and local tiers (serve.py).

Ray is an optional extra (`pip install 'routenlp[ray]'`): nothing here imports it at module
level, so the rest of RouteNLP never pays for it and a missing install is one clear error.
"""

from __future__ import annotations

from types import ModuleType

from routenlp.errors import RouteNLPError

class RayUnavailableError(RouteNLPError):
    """Ray (or one of its serve/data parts) is not installed."""


def require_ray(part: str = "") -> ModuleType:
    """Import ray (and `ray.<part>`, e.g. "serve" or "data") or raise a one-line error."""
    try:
        import ray

        if part:
            __import__(f"ray.{part}")
    except ImportError as err:
        what = f"ray[{part}]" if part else "ray"
        raise RayUnavailableError(
            f"--ray needs {what}, which is not installed ({err.name or err}): "
            "pip install 'routenlp[ray]'"
        ) from None
    return ray


def connect(address: str | None, **init_kwargs: object) -> ModuleType:
    """Connect to the cluster at `address` (None: RAY_ADDRESS or a new local instance).

    Reuses an already initialised Ray (a test fixture or an embedding application)."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, **init_kwargs)  # type: ignore[arg-type]
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise RayUnavailableError(
                f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}",
                hint="check --address (e.g. ray://head:10001 or auto) and that `ray status` works there",
            ) from None
    return ray
