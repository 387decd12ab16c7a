"""Tolerant output parsers: turn whatever a small model wrote into the task's answer type.

Small local models add words, change case, wrap answers in JSON or keep generating the
next few-shot block. A parser that raises would turn a usable answer into a tier failure,
so every function here returns a best guess (or None / []) and never raises.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from routenlp.tasks.metrics import known_entity_type, normalise_entity_type, normalise_label

# Special tokens some chat templates leave in decoded text; everything after one is noise.
_SPECIAL_TOKENS = (
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "</s>",
    "<eos>",
    "<|assistant|>",
    "<|user|>",
)
_ROLE_PREFIX = re.compile(
    r"^\s*(?:<\|?assistant\|?>|assistant|model|output|answer|response|label)\s*[:\n]\s*",
    re.IGNORECASE,
)
# A base model continuing the few-shot pattern starts a new block: cut there.
_NEXT_BLOCK = re.compile(r"\n\s*(?:Input|User|Human|Question|Query|###)\s*:", re.IGNORECASE)


def clean_generation(text: Any) -> str:
    """Strip chat artefacts: leading role/"Output:" prefixes, special tokens and whatever
    follows them, and a following few-shot block (`\\nInput: ...`)."""
    if text is None:
        return ""
    s = str(text).lstrip()
    stripped = True
    while stripped:  # leading turn markers ("<start_of_turn>model\n") are not the answer
        stripped = False
        for tok in _SPECIAL_TOKENS:
            if s.startswith(tok):
                s, stripped = s[len(tok) :].lstrip(), True
    cuts = [i for i in (s.find(tok) for tok in _SPECIAL_TOKENS) if i >= 0]
    if cuts:
        s = s[: min(cuts)]
    s = s.strip()
    for _ in range(3):  # "Assistant:\nOutput: x"
        new = _ROLE_PREFIX.sub("", s, count=1)
        if new == s:
            break
        s = new.strip()
    m = _NEXT_BLOCK.search(s)
    if m:
        s = s[: m.start()]
    return s.strip()


# a label mention right after a negation ("not fair", "isn't spam") does not count
_NEGATION = re.compile(
    r"\b(?:not|no|never|nor|isnt|arent|wasnt|werent|doesnt|dont|didnt|cannot|cant|wont)"
    r"\s+(?:\w+\s+)?$"
)


def _word_pattern(norm: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(norm) + r"(?!\w)")


class LabelMatcher:
    """Maps free text to one allowed label (precomputed normal forms for speed)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self._norm = [normalise_label(x) for x in self.labels]
        self._by_norm: dict[str, str] = {}
        for lab, n in zip(self.labels, self._norm):
            self._by_norm.setdefault(n, lab)
        self._squashed = {n.replace(" ", ""): lab for n, lab in self._by_norm.items() if n}
        self._patterns = [
            (_word_pattern(n), lab, n) for lab, n in zip(self.labels, self._norm) if n
        ]

    def match(self, text: Any) -> str | None:
        """exact -> normalised exact (whole text, first line) -> label mentioned in the
        text (longest, then earliest) -> difflib closest (cutoff 0.6) -> None."""
        if not self.labels or text is None:
            return None
        raw = str(text)
        if raw in self.labels:
            return raw
        cleaned = clean_generation(raw)
        if cleaned in self.labels:
            return cleaned
        lines = [ln.strip() for ln in cleaned.splitlines() if ln.strip()]
        candidates = [cleaned] + lines[:1]
        for cand in candidates:
            n = normalise_label(cand)
            if n in self._by_norm:
                return self._by_norm[n]
            if n.replace(" ", "") in self._squashed:
                return self._squashed[n.replace(" ", "")]
        whole = normalise_label(cleaned)
        if not whole:
            return None
        hits: list[tuple[int, int, str]] = []
        negated = 0
        for pat, lab, n in self._patterns:
            for m in pat.finditer(whole):
                if _NEGATION.search(whole[: m.start()]):
                    negated += 1
                    continue
                hits.append((m.start(), m.end(), lab))
                break
        if hits:
            # a mention inside a longer mention is not a separate answer
            # ("fair" never matches inside "unfair"; "card" inside "card arrival" would)
            kept = [
                h
                for h in hits
                if not any(
                    o is not h and o[0] <= h[0] and h[1] <= o[1] and (o[1] - o[0]) > (h[1] - h[0])
                    for o in hits
                )
            ]
            kept.sort(key=lambda h: (h[0], -(h[1] - h[0])))
            return kept[0][2]
        if negated:
            return None  # "not fair": the model ruled a label out without naming one
        first = normalise_label(lines[0]) if lines else whole
        for probe in dict.fromkeys((first, whole)):
            if len(probe) > 200:
                continue
            got = self._token_overlap(probe)
            if got is not None:
                return got
            close = difflib.get_close_matches(probe, list(self._by_norm), n=1, cutoff=0.6)
            if close:
                return self._by_norm[close[0]]
        return None

    def _token_overlap(self, probe: str) -> str | None:
        """Label sharing the most whole words with a short answer ("activate" ->
        activate_card); ties go to difflib among the tied labels; None when none share."""
        words = set(probe.split())
        if not words or len(words) > 6:
            return None
        scored: dict[str, float] = {}
        for n, lab in self._by_norm.items():
            toks = set(n.split())
            common = len(words & toks)
            if common:
                scored[n] = common / len(toks | words)
        if not scored:
            return None
        best = max(scored.values())
        tied = [n for n, v in scored.items() if v == best]
        if len(tied) > 1:
            close = difflib.get_close_matches(probe, tied, n=1, cutoff=0.0)
            return self._by_norm[close[0]] if close else self._by_norm[tied[0]]
        return self._by_norm[tied[0]]


def parse_label(text: Any, labels: Sequence[str]) -> str | None:
    """Best-matching allowed label for a model output, or None if nothing is plausible."""
    try:
        return LabelMatcher(labels).match(text)
    except Exception:  # a parser must never take a request down
        return None


# ---------------------------------------------------------------------------------------
# entity extraction
# ---------------------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")
_NONE = re.compile(
    r"^\s*(?:none|no entities?(?: found)?|n/?a|nothing|empty|\[\s*\])\s*\.?\s*$", re.IGNORECASE
)
_TYPE_FIRST = re.compile(r"^\s*\[?([A-Za-z][A-Za-z_\- ]{1,20}?)\]?\s*[:=\u2013\u2014]\s*(.+?)\s*$")
_TYPE_LAST = re.compile(
    r"^\s*(.+?)\s*(?:[:=\u2013\u2014]|\s-\s|->)\s*([A-Za-z][A-Za-z_\-]{1,20})\s*\.?\s*$"
)
_PAREN = re.compile(r"([^()\n,;]+?)\s*[(\[]\s*([A-Za-z][A-Za-z_\-]{1,20})\s*[)\]]")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def _accept_type(raw: str, allowed: set[str] | None) -> str | None:
    t = normalise_entity_type(raw)
    if allowed:
        return t if t in allowed else None
    return t if known_entity_type(raw.replace(" ", "_")) or known_entity_type(raw) else None


def _clean_entity_text(text: str) -> str:
    s = re.sub(r"^(?:and|or|&)\s+", "", text.strip())
    s = s.strip().strip(_QUOTES).strip()
    s = s.rstrip(".,;").strip().strip(_QUOTES).strip()
    return s


def _entity(text: Any, typ: Any, allowed: set[str] | None) -> dict[str, str] | None:
    if not isinstance(text, str) or typ is None:
        return None
    t = _accept_type(str(typ), allowed)
    s = _clean_entity_text(text)
    if t is None or not s or _NONE.match(s):
        return None
    return {"text": s, "type": t}


def _from_json(obj: Any, allowed: set[str] | None) -> list[dict[str, str]] | None:
    """Entities from a parsed JSON value; None when the shape is not recognisable."""
    if isinstance(obj, dict):
        for key in ("entities", "entity", "results", "output", "ner"):
            if key in obj and isinstance(obj[key], (list, dict)):
                return _from_json(obj[key], allowed)
        if any(k in obj for k in ("text", "entity", "word")):
            e = _entity(
                obj.get("text", obj.get("entity", obj.get("word"))),
                obj.get("type", obj.get("label", obj.get("entity_type"))),
                allowed,
            )
            return [e] if e else []
        out: list[dict[str, str]] = []
        for k, v in obj.items():  # {"ORG": ["Apple"], "PER": "Tim Cook"} or {"Apple": "ORG"}
            if _accept_type(str(k), allowed):
                for item in v if isinstance(v, list) else [v]:
                    e = _entity(item, k, allowed)
                    if e:
                        out.append(e)
            elif isinstance(v, str) and _accept_type(v, allowed):
                e = _entity(k, v, allowed)
                if e:
                    out.append(e)
        return out
    if isinstance(obj, list):
        out = []
        for item in obj:
            if isinstance(item, dict):
                got = _from_json(item, allowed)
                out.extend(got or [])
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                a, b = item
                e = _entity(a, b, allowed) or _entity(b, a, allowed)
                if e:
                    out.append(e)
        return out
    return None


def _json_candidates(text: str) -> list[Any]:
    found = []
    for opener, closer in (("[", "]"), ("{", "}")):
        start = text.find(opener)
        end = text.rfind(closer)
        if start >= 0 and end > start:
            try:
                found.append((start, json.loads(text[start : end + 1])))
            except (ValueError, RecursionError):
                continue
    found.sort(key=lambda x: x[0])
    return [obj for _, obj in found]


def parse_entities(text: Any, types: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Entities as [{"text", "type"}] from `TYPE: text` lines, JSON, or `text (TYPE)`.

    `types` restricts the accepted types (after normalisation: PERSON->PER, ...); without
    it, the standard PER/LOC/ORG/MISC spellings are accepted. Order follows the output.
    """
    try:
        return _parse_entities(text, types)
    except Exception:
        return []


def _parse_entities(text: Any, types: Sequence[str] | None) -> list[dict[str, str]]:
    if isinstance(text, list):
        allowed = {normalise_entity_type(t) for t in types} if types else None
        return _from_json(text, allowed) or []
    s = clean_generation(text)
    if not s or _NONE.match(s):
        return []
    allowed = {normalise_entity_type(t) for t in types} if types else None
    if "[" in s or "{" in s:
        for obj in _json_candidates(s):
            got = _from_json(obj, allowed)
            if got is not None and (got or obj == [] or obj == {}):
                return got
    out: list[dict[str, str]] = []
    for line in s.splitlines():
        line = _BULLET.sub("", line).strip()
        if not line or _NONE.match(line):
            continue
        m = _TYPE_FIRST.match(line)
        if m and _accept_type(m.group(1), allowed):
            typ = m.group(1)
            parts = [p for p in re.split(r"\s*;\s*|\s+\|\s+", m.group(2)) if p.strip()]
            for part in parts:
                e = _entity(part, typ, allowed)
                if e:
                    out.append(e)
            continue
        paren = list(_PAREN.finditer(line))
        paren_entities = [e for e in (_entity(p.group(1), p.group(2), allowed) for p in paren) if e]
        if paren_entities:
            out.extend(paren_entities)
            continue
        m = _TYPE_LAST.match(line)
        if m:
            e = _entity(m.group(1), m.group(2), allowed)
            if e:
                out.append(e)
    return out


def format_entities(entities: Any) -> str:
    """Render entities in the format `parse_entities` reads best: one `TYPE: text` line
    each, in order; `NONE` for an empty list. Strings pass through unchanged."""
    if isinstance(entities, str):
        return entities
    lines = []
    for e in entities or []:
        if isinstance(e, dict):
            text = str(e.get("text", "")).strip()
            typ = normalise_entity_type(e.get("type", ""))
        elif isinstance(e, (list, tuple)) and len(e) == 2:
            text, typ = str(e[0]).strip(), normalise_entity_type(e[1])
        else:
            continue
        if text and typ:
            lines.append(f"{typ}: {text}")
    return "\n".join(lines) if lines else "NONE"
