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


def test_first_transformers_import_from_two_threads_is_safe() -> None:
    """A fresh interpreter: two threads resolve transformers' lazy classes at once (the
    demo pulls two models side by side); unguarded, one of them raised ImportError."""
    import subprocess
    import sys

    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from routenlp.models.loading import hf_classes\n"
        "names = ('AutoModelForCausalLM', 'AutoTokenizer')\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    got = [f.result() for f in [pool.submit(hf_classes, *names) for _ in range(2)]]\n"
        "assert got[0] == got[1] and all(c.__name__ == n for c, n in zip(got[0], names))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
