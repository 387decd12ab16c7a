"""A per-tier circuit breaker: stop calling a tier that keeps failing, probe it again later.

closed -> (N consecutive failures) -> open -> (reset_s elapsed) -> half-open: exactly one
probe call goes through; its success closes the breaker, its failure re-opens it. While
open, calls fail at once, so a dead tier costs the request nothing and the cascade moves
straight on to the next tier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Thread-safe breaker; `allow()` before a call, then `success()` or `failure()`."""

    def __init__(
        self,
        failures: int = 3,
        reset_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = int(failures)
        self.reset_s = float(reset_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> State:
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.reset_s:
                return "half_open"
            return self._state

    def allow(self) -> bool:
        """True if a call may go out now (in half-open state: only the one probe)."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open":
                if self._clock() - self._opened_at < self.reset_s:
                    return False
                self._state = "half_open"
                self._probing = False
            if self._probing:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._state = "closed"
            self._consecutive = 0
            self._probing = False
            self.last_error = None

    def failure(self, error: str | None = None) -> None:
        with self._lock:
            self.last_error = error
            self._consecutive += 1
            if self._state == "half_open" or self._consecutive >= self.failures:
                self._state = "open"
                self._opened_at = self._clock()
                self._probing = False

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go out (0 when calls are allowed)."""
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self.reset_s - (self._clock() - self._opened_at))
