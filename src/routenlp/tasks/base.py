"""TaskSpec: everything the system needs to know about one task in one object.

A tier never sees a TaskConfig; it sees a `Request` built here. Labelling, evaluation and
the closed loop never compare raw strings; they call `parse` and `score` here. Keeping
prompt, parser and metric together means the answer format asked for is exactly the
format parsed, and the distillation targets (`reference_text`) are in that format too.
"""

from __future__ import annotations

import functools
import json

import math
from collections.abc import Sequence
from typing import Any, Literal

from routenlp.config import TaskConfig
from routenlp.errors import DataError
from routenlp.tasks import metrics as M
from routenlp.tasks import templates as T
from routenlp.tasks.parsers import LabelMatcher, clean_generation, format_entities, parse_entities
from routenlp.tiers.base import Request

Family = Literal["classification", "extraction", "generation"]

CLASSIFICATION_KINDS = ("intent_classification", "clause_classification", "risk_classification")
DEFAULT_ENTITY_TYPES = ("PER", "LOC", "ORG")
DEFAULT_MAX_TOKENS: dict[str, int] = {
    "classification": 12,
    "entity_extraction": 64,
    "reply_generation": 96,
    "summarisation": 128,
    "generic": 96,
}


def family_of(kind: str, labels: Sequence[str] | None) -> Family:
    """Answer type of a task kind; a `generic` task with labels behaves as classification."""
    if kind in CLASSIFICATION_KINDS or (kind == "generic" and labels):
        return "classification"
    if kind == "entity_extraction":
        return "extraction"
    return "generation"


class TaskSpec:
    """Prompt builder, parser and metric of one configured task."""

    def __init__(
        self,
        task: TaskConfig,
        *,
        labels: list[str] | None = None,
        entity_types: Sequence[str] | None = None,
    ) -> None:
        self.task = task
        self.name = task.name
        self.kind = task.kind
        self.metric = task.metric
        self.family: Family = family_of(task.kind, labels)
        self.labels: list[str] | None = list(labels) if self.family == "classification" else None
        self.entity_types: list[str] = list(entity_types or DEFAULT_ENTITY_TYPES)
        self._matcher = LabelMatcher(self.labels) if self.labels else None

    def __repr__(self) -> str:
        n = len(self.labels) if self.labels else 0
        return f"TaskSpec({self.name!r}, kind={self.kind!r}, metric={self.metric!r}, labels={n})"

    # -- prompts -----------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        """The instruction text (task.prompt override or the kind's default)."""
        if self.task.prompt:
            template = self.task.prompt
        elif self.family == "classification" and self.kind == "generic":
            template = T.INSTRUCTIONS["generic_labels"]
        else:
            template = T.INSTRUCTIONS.get(self.kind, T.INSTRUCTIONS["generic"])
        return T.fill(template, labels=self.labels, types=self.entity_types)

    @property
    def default_max_tokens(self) -> int:
        if self.task.max_tokens:
            return self.task.max_tokens
        if self.family == "classification":
            # room for the longest label (~3 chars per token) plus a little slack
            longest = max((len(x) for x in self.labels or []), default=0)
            return max(DEFAULT_MAX_TOKENS["classification"], math.ceil(longest / 3) + 4)
        return DEFAULT_MAX_TOKENS.get(self.kind, DEFAULT_MAX_TOKENS["generic"])

    def build_request(
        self,
        query: str,
        *,
        fewshot: Sequence[tuple[str, Any]] | None = None,
        max_tokens: int | None = None,
        id: str | None = None,
    ) -> Request:
        """A Request with both chat `messages` and a completion `prompt` for `query`.

        `fewshot` holds (input, reference) pairs; references are rendered with
        `reference_text` so examples show exactly the output format the parser reads.
        """
        query = str(query)
        if fewshot is None:
            fewshot = (
                self.similar_fewshot(query)
                if self.task.fewshot_select == "similar"
                else self.default_fewshot
            )
        shots = [(str(x), self.reference_text(y)) for x, y in fewshot]
        instruction = self.instruction
        if self.task.prompt:
            user_first, completion_instr = T.split_user_template(instruction, query)
        else:
            user_first, completion_instr = f"{instruction}\n\n{query}", instruction
        return Request(
            task=self.name,
            prompt=T.completion_prompt(completion_instr, shots, query),
            query=query,
            messages=T.chat_messages(user_first, completion_instr, shots, query),
            max_tokens=max_tokens if max_tokens is not None else self.default_max_tokens,
            id=id,
        )

    def _train_examples(self) -> list[dict[str, Any]]:
        """The task's train rows (few-shot source); none when it has no train data."""
        from routenlp.errors import RouteNLPError
        from routenlp.workloads import task_rows

        try:
            rows = task_rows(self.task, "train")
        except (RouteNLPError, OSError):
            return []
        cap = self.task.fewshot_max_difficulty
        if cap is not None:
            rows = [r for r in rows if float(r.get("difficulty") or 0.0) <= cap]
        return rows

    @functools.cached_property
    def _similar_index(self) -> tuple[Any, Any, list[dict[str, Any]]] | None:
        """TF-IDF over the train inputs (word 1-2 grams): cheap, deterministic, no model."""
        rows = [r for r in self._train_examples() if str(r.get("input", "")).strip()]
        if not rows:
            return None
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        mat = vec.fit_transform([str(r["input"]) for r in rows])
        return vec, mat, rows

    def similar_fewshot(self, query: str) -> list[tuple[str, Any]]:
        """The `task.fewshot` train examples most similar to `query`, nearest last.

        Retrieved demonstrations are how a 135M-parameter model gets routine requests
        right (it copies the format, and often the answer, of a near-identical example);
        a request unlike anything in train data gets weak examples and fails, which is
        the difficulty signal routing lives on. A train row identical to the query is
        never shown (no answer leak when a train row is itself being labelled)."""
        k = self.task.fewshot
        index = self._similar_index
        if k <= 0 or index is None:
            return []
        vec, mat, rows = index
        sims = (mat @ vec.transform([query]).T).toarray().ravel()
        order = sorted(range(len(rows)), key=lambda i: (-sims[i], str(rows[i].get("id", i))))
        picked: list[int] = []
        for i in order:
            if str(rows[i]["input"]).strip() == query.strip():
                continue
            picked.append(i)
            if len(picked) == k:
                break
        return [(rows[i]["input"], rows[i].get("reference")) for i in reversed(picked)]

    @functools.cached_property
    def default_fewshot(self) -> list[tuple[str, Any]]:
        """`task.fewshot` short, easy train examples (distinct labels for classification).

        Tiny base models (Gemma-3-270M has no chat template) only answer in the parser's
        format when shown it; examples come from the task's train split (or the built-in
        workload), never from the data being served. No train data -> no examples."""
        k = self.task.fewshot
        if k <= 0:
            return []
        rows = self._train_examples()
        rows = sorted(rows, key=lambda r: (float(r.get("difficulty", 0.0)), len(r["input"]), str(r["id"])))
        shots: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for r in rows[:2000]:
            key = json.dumps(r.get("reference"), sort_keys=True)
            if self.family == "classification" and key in seen:
                continue
            if self.family == "extraction" and not r.get("reference") and shots:
                continue
            seen.add(key)
            shots.append((r["input"], r.get("reference")))
            if len(shots) == k:
                break
        return shots

    # -- answers -----------------------------------------------------------------------
    def parse(self, text: Any) -> Any:
        """Model output -> answer (label | None, entity list, or cleaned text). Never raises."""
        try:
            if self.family == "classification":
                assert self._matcher is not None
                return self._matcher.match(text)
            if self.family == "extraction":
                return parse_entities(text, self.entity_types)
            return clean_generation(text)
        except Exception:
            if self.family == "classification":
                return None
            return [] if self.family == "extraction" else ""

    def reference_text(self, reference: Any) -> str:
        """The gold (or teacher) answer written in the output format the parser reads."""
        if reference is None:
            return "NONE" if self.family == "extraction" else ""
        if self.family == "extraction":
            return format_entities(reference)
        if isinstance(reference, str):
            return reference.strip()
        if isinstance(reference, (list, tuple)) and all(isinstance(x, str) for x in reference):
            return "\n".join(x.strip() for x in reference)
        if isinstance(reference, (dict, list)):
            return json.dumps(reference, ensure_ascii=False, sort_keys=True)
        return str(reference)

    # -- quality -----------------------------------------------------------------------
    def _prepare(self, prediction: Any) -> Any:
        """Accept raw model text as well as parsed answers."""
        if self.family == "classification" and isinstance(prediction, str):
            if self.labels and prediction in self.labels:
                return prediction
            return self.parse(prediction)
        if isinstance(prediction, str):  # extraction -> entities, generation -> cleaned text
            return self.parse(prediction)
        return prediction

    def score(self, prediction: Any, reference: Any) -> float:
        """Per-sample quality in [0, 1] under the task's metric."""
        metric = self.metric
        if metric == "score":
            return M.score_passthrough(prediction, reference)
        pred = self._prepare(prediction)
        if metric in ("accuracy", "macro_f1"):
            return M.accuracy(pred, reference)
        if metric == "entity_f1":
            ref = reference
            if isinstance(reference, str):  # a teacher answer kept as text
                ref = parse_entities(reference, self.entity_types)
            return M.entity_f1(pred if isinstance(pred, list) else [], ref)
        pred_text = pred if isinstance(pred, str) else self.reference_text(pred)
        ref_text = self.reference_text(reference)
        if metric == "rougeL":
            return M.rouge_l(pred_text, ref_text)
        if metric == "bertscore":
            return M.bertscore_f1(pred_text, ref_text)
        raise DataError(f"task {self.name!r}: metric {metric!r} has no scorer")

    def dataset_score(self, predictions: Sequence[Any], references: Sequence[Any]) -> float:
        """Dataset-level quality: macro-F1 over the labels present in the references for
        `macro_f1`, else the mean per-sample score (0.0 for an empty set)."""
        if len(predictions) != len(references):
            raise DataError(
                f"task {self.name!r}: {len(predictions)} predictions but "
                f"{len(references)} references"
            )
        if not predictions:
            return 0.0
        if self.metric == "macro_f1":
            return M.macro_f1([self._prepare(p) for p in predictions], list(references))
        total = sum(self.score(p, r) for p, r in zip(predictions, references))
        return float(total / len(predictions))
