"""Side-by-side LoRA runs share torch's process-wide thread count: the first one's saved
count is restored only when the last one ends (an early finisher restoring it changed the
other run's float sums, so the same set gave different adapters from run to run)."""

from __future__ import annotations

import torch

from routenlp.loop.distill import _enter_threads, _exit_threads


def test_thread_count_is_restored_only_after_the_last_run() -> None:
    before = torch.get_num_threads()
    try:
        _enter_threads(1)
        _enter_threads(1)
        _exit_threads()  # one chain done: the other still trains on one thread
        assert torch.get_num_threads() == 1
        _exit_threads()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
