"""LoRA training batches: every example exactly once per epoch, seeded, and grouped by
length so little of a batch is padding."""

from __future__ import annotations

import random

from routenlp.loop.distill import GROUP_WINDOW, _batches


def _items(lengths: list[int]) -> list[tuple[list[int], list[int]]]:
    return [([k] * n, [-100] * n) for k, n in enumerate(lengths)]


def _padded(batches: list[list[tuple[list[int], list[int]]]]) -> int:
    return sum(max(len(x) for x, _ in b) * len(b) for b in batches)


def test_each_example_once_and_seeded() -> None:
    items = _items([random.Random(0).randint(100, 450) for _ in range(48)])
    a = _batches(items, 4, random.Random(13))
    b = _batches(items, 4, random.Random(13))
    c = _batches(items, 4, random.Random(14))
    ids = sorted(x[0][0] for batch in a for x in batch)
    assert ids == list(range(48)) and all(len(batch) == 4 for batch in a)
    assert a == b and a != c


def test_grouping_cuts_padding_against_random_pairs() -> None:
    rng = random.Random(1)
    items = _items([rng.randint(100, 450) for _ in range(64)])
    real = sum(len(x) for x, _ in items)
    grouped = _padded(_batches(items, 4, random.Random(13)))
    order = list(range(len(items)))
    random.Random(13).shuffle(order)
    ungrouped = _padded([[items[i] for i in order[s:s + 4]] for s in range(0, len(order), 4)])
    assert grouped < ungrouped and grouped / real < 1.10 < ungrouped / real


def test_batches_mix_windows() -> None:
    """Sorting stays inside a window, and the batch order is shuffled: the first batches are
    not simply the shortest examples."""
    items = _items(list(range(100, 100 + 8 * GROUP_WINDOW * 2)))
    batches = _batches(items, 8, random.Random(3))
    firsts = [max(len(x) for x, _ in b) for b in batches]
    assert firsts != sorted(firsts)


def test_evaluation_batches_keep_order() -> None:
    items = _items([300, 120, 250, 400, 90])
    assert [x for b in _batches(items, 2, None) for x in b] == items
