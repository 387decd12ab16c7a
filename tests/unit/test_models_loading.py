"""Hugging Face loads are serialised: concurrent `from_pretrained` calls never overlap."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from routenlp.models.loading import load_pretrained


class _SlowFactory:
    active = 0
    peak = 0
    guard = threading.Lock()

    @classmethod
    def from_pretrained(cls, name: str) -> str:
        with cls.guard:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
        time.sleep(0.02)
        with cls.guard:
            cls.active -= 1
        return name


def test_concurrent_loads_do_not_overlap() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        out = list(pool.map(lambda i: load_pretrained(_SlowFactory, f"m{i}"), range(8)))
    assert out == [f"m{i}" for i in range(8)]
    assert _SlowFactory.peak == 1
