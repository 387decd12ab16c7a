"""Small helpers shared by the workload grammars: seeded choice, slot filling, noise."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

X = TypeVar("X")


def pick(rng: random.Random, items: Sequence[X]) -> X:
    return items[rng.randrange(len(items))]


def weighted(rng: random.Random, weights: Mapping[X, float]) -> X:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def chance(rng: random.Random, p: float) -> bool:
    return rng.random() < p


class SlotDict(dict):
    """format_map helper that raises a clear error for a template slot nobody filled."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"workload template slot {{{key}}} has no value")


def render(template: str, slots: Mapping[str, Any]) -> str:
    return template.format_map(SlotDict(slots))


def cap_first(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


# Sentence-initial words that are safe to lower-case when a sentence becomes a clause
# (anything else may be a name: "Streamly may ...", "Supplier shall ...").
_COMMON_STARTS = frozenset(
    """a all although an analysts any are arbitration as at bond by can card consumer do
    does during each either for from has how if in is it it's markets my neither nothing
    notwithstanding of oil on one our payment payments please refunds save sending someone
    still stocks subject that the there there's these this to topping transfers upon we
    what when where while who why will without you your""".split()
)


def lower_first(s: str) -> str:
    """Lower-case the first letter when the first word is a common sentence opener."""
    if not s:
        return s
    first = s.split(" ", 1)[0].strip(",.;:!?").lower()
    if first not in _COMMON_STARTS:
        return s
    return s[:1].lower() + s[1:]


def typo(rng: random.Random, text: str, n: int = 1) -> str:
    """Swap two adjacent letters inside `n` random longer words (realistic typing noise)."""
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    rng.shuffle(idx)
    for i in idx[:n]:
        w = words[i]
        j = rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def money(
    rng: random.Random, symbols: Sequence[str] = ("$", "£", "€"), lo: int = 5, hi: int = 900
) -> str:
    sym = pick(rng, symbols)
    value = rng.randint(lo, hi)
    if chance(rng, 0.4):
        return f"{sym}{value}.{rng.randint(0, 99):02d}"
    return f"{sym}{value:,}"


def word_count(text: str) -> int:
    return len(re.findall(r"\S+", text))


def tidy(text: str) -> str:
    """Collapse spaces and fix spacing before punctuation left by empty slots."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    return text.strip()
