"""Prompt templates: one short instruction per task kind, rendered two ways.

Chat tiers (instruction-tuned models, OpenAI-compatible endpoints) get `messages`; base
models without a chat template get a completion `prompt` of few-shot blocks ending in
`Output:` so the model's continuation is the answer. Both come from the same instruction
so the two styles ask the same question.
"""

from __future__ import annotations

from collections.abc import Sequence

# Default instructions per kind. {labels} is replaced by the allowed labels, {types} by
# the entity types. Kept short: the cheap tiers are 135M-270M parameter models.
INSTRUCTIONS: dict[str, str] = {
    "intent_classification": (
        "Classify the intent of the customer message. "
        "Answer with exactly one label from this list: {labels}."
    ),
    "clause_classification": (
        "Classify the type of this contract clause. "
        "Answer with exactly one label from this list: {labels}."
    ),
    "risk_classification": (
        "Rate how unfair this terms-of-service clause is for the consumer. "
        "Answer with exactly one label from this list: {labels}."
    ),
    "entity_extraction": (
        "List the named entities in the text ({types}). Write one entity per line as "
        "TYPE: text, in the order they appear. If there are none, write NONE."
    ),
    "summarisation": (
        "Summarise the key financial results in 1-3 short lines, one fact per line."
    ),
    "reply_generation": (
        "Write a short, polite customer-service reply to the customer's message."
    ),
    "generic": "Answer the following input.",
    "generic_labels": "Answer with exactly one label from this list: {labels}.",
}

ENTITY_TYPE_NAMES = {"PER": "PER = person", "LOC": "LOC = location", "ORG": "ORG = organisation"}


def describe_types(types: Sequence[str]) -> str:
    return ", ".join(ENTITY_TYPE_NAMES.get(t, t) for t in types)


def fill(template: str, *, labels: Sequence[str] | None = None, types: Sequence[str] = ()) -> str:
    """Substitute {labels} and {types} only (templates may contain other braces, e.g. JSON)."""
    out = template
    if "{labels}" in out:
        out = out.replace("{labels}", ", ".join(labels or []))
    if "{types}" in out:
        out = out.replace("{types}", describe_types(types))
    return out


def split_user_template(template: str, query: str) -> tuple[str, str]:
    """Return (chat user text, completion instruction) for a task.prompt override.

    With `{input}` the chat message is the template with the query in place; the completion
    instruction is the template without the placeholder (the query follows in `Input:`).
    Without `{input}` the template is an instruction and the query is appended.
    """
    if "{input}" in template:
        chat = template.replace("{input}", query)
        instr = " ".join(template.replace("{input}", " ").split())
        return chat, instr
    return f"{template.strip()}\n\n{query}", template.strip()


def completion_prompt(instruction: str, fewshot: Sequence[tuple[str, str]], query: str) -> str:
    """`instruction` + blocks `Input: ...\\nOutput: ...\\n\\n` + `Input: <query>\\nOutput:`."""
    parts = [instruction.strip() + "\n\n"] if instruction.strip() else []
    for x, y in fewshot:
        parts.append(f"Input: {x}\nOutput: {y}\n\n")
    parts.append(f"Input: {query}\nOutput:")
    return "".join(parts)


def chat_messages(
    user_first: str, instruction: str, fewshot: Sequence[tuple[str, str]], query: str
) -> list[dict[str, str]]:
    """Chat turns. Few-shot examples become user/assistant pairs; the instruction goes in
    the first user turn only (no system role: some small-model templates reject it)."""
    if not fewshot:
        return [{"role": "user", "content": user_first}]
    msgs: list[dict[str, str]] = []
    for i, (x, y) in enumerate(fewshot):
        content = f"{instruction.strip()}\n\n{x}" if i == 0 and instruction.strip() else x
        msgs.append({"role": "user", "content": content})
        msgs.append({"role": "assistant", "content": y})
    msgs.append({"role": "user", "content": query})
    return msgs
