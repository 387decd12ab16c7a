"""Financial grammar: news sentences with PER/LOC/ORG entities (fin_ner) and short
earnings-call passages with 1-3 line summaries (fin_summ).

Company and person names are combinations of invented stems and common name parts, so
the model cannot rely on memorised entities. Entities are recorded while the template is
rendered left to right, so the reference is in sentence order by construction.
"""

from __future__ import annotations

import random
import re
from typing import Any

from routenlp.workloads._common import cap_first, chance, lower_first, pick, tidy, word_count

ORG_STEMS = [
    "Northwind", "Bluewater", "Crestline", "Harborview", "Ironbridge", "Silverpeak", "Redwood",
    "Oakmont", "Brightstone", "Kestrel", "Meridian", "Granite Bay", "Pinecrest", "Larkspur",
    "Vantage", "Corvid", "Halcyon", "Westbrook", "Ashford", "Trident", "Blackfen", "Aurora",
    "Calder", "Sablewood", "Tidewater", "Everhart", "Fenwick", "Quarry Hill", "Stonegate",
    "Windmere", "Coppergate", "Elmstead",
]
ORG_SUFFIXES = [
    "Capital", "Holdings", "Bank", "Energy", "Group", "Partners", "Financial", "Industries",
    "Logistics", "Pharma", "Motors", "Insurance", "Securities", "Technologies", "Mining",
    "Airlines", "Retail", "Foods", "Telecom", "Semiconductor",
]
ORG_LEGAL = ["", "", "", " plc", " Ltd", " AG", " Corp", " SA"]
INSTITUTIONS = [
    "Federal Reserve", "European Central Bank", "Bank of England", "International Monetary Fund",
    "World Bank", "Securities and Exchange Commission", "Bank of Japan", "OPEC",
    "European Commission", "Reserve Bank of India",
]
FIRST = [
    "Maria", "James", "Aiko", "Rahul", "Elena", "Thomas", "Chen", "Fatima", "Lucas", "Sofia",
    "David", "Amara", "Henrik", "Priya", "Olga", "Kwame", "Laura", "Mateo", "Yusuf", "Hannah",
    "Kenji", "Ingrid", "Samuel", "Nadia", "Omar", "Claire", "Viktor", "Leila", "Peter", "Ana",
]
LAST = [
    "Okafor", "Lindqvist", "Tanaka", "Moreau", "Patel", "Schneider", "Alvarez", "Novak",
    "Kowalski", "Haddad", "Fischer", "Rossi", "Mensah", "Ivanova", "Campbell", "Nakamura",
    "Duarte", "Berg", "Castillo", "Whitfield", "Adeyemi", "Larsen", "Brennan", "Suzuki",
    "Varga", "Delgado", "Hartmann", "Osei",
]
CITIES = [
    "London", "New York", "Frankfurt", "Singapore", "Tokyo", "Sao Paulo", "Johannesburg",
    "Mumbai", "Toronto", "Sydney", "Zurich", "Dubai", "Hong Kong", "Paris", "Chicago",
    "Nairobi", "Seoul", "Mexico City", "Oslo", "Madrid", "Lagos", "Jakarta", "Warsaw",
]
COUNTRIES = [
    "Brazil", "Germany", "India", "Japan", "Canada", "Kenya", "Norway", "Chile", "Indonesia",
    "Poland", "Vietnam", "Egypt", "Australia", "Switzerland", "South Africa", "Mexico",
    "Europe", "Asia", "Latin America",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
QUARTERS = ["first-quarter", "second-quarter", "third-quarter", "fourth-quarter"]
ROLES = ["chief executive", "chief financial officer", "chairman", "head of trading", "chief economist", "finance director"]
ANALYST_ROLES = ["analyst", "strategist", "economist", "portfolio manager"]

# Entity slots: {ORG} new company, {INST} institution (ORG), {PER} new person, {LAST}
# surname of the last person (PER), {ORGREF} repeat of the last company (ORG), {LOC}
# city or country, {LOCORG} "Bank of <city>"-style ORG (no separate LOC). Other slots
# are plain text; hard templates add non-entity capitalised words (CEO, EBITDA, IPO).
EASY = [
    "{ORG} shares rose {pct} on {day} after the company raised its full-year outlook.",
    "{ORG} reported a {pct} increase in {quarter} revenue.",
    "{ORG} shares fell {pct} in early trading on {day}.",
    "{role_cap} {PER} said {ORG} would cut costs by {amt} this year.",
    "{ORG} opened a new regional office in {LOC}.",
    "The {INST} left interest rates unchanged on {day}.",
    "Stocks in {LOC} closed {updown} on {day}.",
    "Markets were broadly flat on {day} as investors awaited inflation data.",
    "Oil prices fell {pct} in early trading as supply concerns eased.",
    "Analysts expect earnings to improve in the second half of the year.",
    "{PER} was named {role} of {ORG}.",
    "{ORG} agreed to buy a stake in {ORG} for {amt}.",
    "Bond yields climbed for a {nth} straight session on {day}.",
    "The dollar weakened against the euro after the jobs report.",
    "{ORG} plans to list its shares in {LOC} next year.",
    "Consumer spending in {LOC} slowed in the {quarter_noun}.",
    "{ORG} said {quarter} profit beat expectations.",
    "{LOCORG} raised its benchmark rate by {bp} basis points.",
]
MEDIUM = [
    "{ORG} shares rose {pct} after {role} {PER} said demand in {LOC} remained strong.",
    "{PER}, {role} of {ORG}, said the company would expand in {LOC}.",
    "{ORG} and {ORG} agreed to merge in a deal valued at {amt}, the companies said on {day}.",
    "The {INST} warned that growth in {LOC} could slow, {ANALYST} {PER} noted.",
    "{ORG} will move its headquarters from {LOC} to {LOC} by the end of the year.",
    "Regulators in {LOC} fined {ORG} {amt} over reporting failures.",
    "{LOCORG} kept rates on hold, while {ORG} cut its forecast for {LOC}.",
]
HARD = [
    "{ORG}, which is based in {LOC}, said on {day} that {PER} would step down as CEO and be replaced by {PER}, a former {ORG} executive.",
    "In a note to clients, {PER} of {ORG} said EBITDA margins in {LOC} and {LOC} were likely to narrow in Q3.",
    "{PER}, {role} of {ORG}, told reporters in {LOC} that the IPO was on track; {LAST} added that {ORGREF} had no plans to raise prices.",
    "The {INST} and {LOCORG} both signalled caution on {day}, and {ORG} said its {LOC} unit would delay the ESG report.",
    "After talks in {LOC}, {ORG} agreed to sell its stake in {ORG} to {ORG} for {amt}, {PER} said.",
    "{PER} and {PER} of {ORG} will meet officials from the {INST} in {LOC} before the GDP data on {day}.",
    "Shares of {ORG} jumped {pct} after {LOCORG} approved the deal; {ORGREF} said {PER} would lead the combined firm from {LOC}.",
]
JOINERS = ["; meanwhile, ", ". Separately, ", ", while "]


def _company(rng: random.Random) -> str:
    return f"{pick(rng, ORG_STEMS)} {pick(rng, ORG_SUFFIXES)}{pick(rng, ORG_LEGAL)}"


def _person(rng: random.Random) -> tuple[str, str]:
    last = pick(rng, LAST)
    return f"{pick(rng, FIRST)} {last}", last


def _plain_slots(rng: random.Random) -> dict[str, str]:
    role = pick(rng, ROLES)
    return {
        "pct": f"{rng.randint(1, 19)}.{rng.randint(0, 9)}%" if chance(rng, 0.6) else f"{rng.randint(1, 25)}%",
        "day": pick(rng, DAYS),
        "quarter": pick(rng, QUARTERS),
        "quarter_noun": pick(rng, ["first quarter", "second quarter", "third quarter", "fourth quarter"]),
        "role": role,
        "role_cap": role[:1].upper() + role[1:],
        "ANALYST": pick(rng, ANALYST_ROLES),
        "amt": f"${rng.randint(2, 950)} {pick(rng, ['million', 'billion'])}",
        "updown": pick(rng, ["higher", "lower", "mixed"]),
        "nth": pick(rng, ["second", "third", "fourth", "fifth"]),
        "bp": str(pick(rng, [25, 50, 75])),
    }


_SLOT = re.compile(r"\{([A-Za-z_]+)\}")


def render_entities(rng: random.Random, template: str) -> tuple[str, list[dict[str, str]]]:
    """Fill a template left to right, returning the text and its entities in order."""
    plain = _plain_slots(rng)
    entities: list[dict[str, str]] = []
    last_person = ""
    last_org = ""
    used: set[str] = set()
    out: list[str] = []
    pos = 0
    for m in _SLOT.finditer(template):
        out.append(template[pos : m.start()])
        pos = m.end()
        slot = m.group(1)
        text, typ = "", None
        if slot == "ORG":
            text = _company(rng)
            while text in used:
                text = _company(rng)
            last_org, typ = text, "ORG"
        elif slot == "ORGREF":
            text, typ = (last_org or _company(rng)), "ORG"
        elif slot == "INST":
            text, typ = pick(rng, INSTITUTIONS), "ORG"
        elif slot == "LOCORG":
            text = f"{pick(rng, ['Bank of', 'Central Bank of', 'Port of', 'Stock Exchange of'])} {pick(rng, CITIES + COUNTRIES[:12])}"
            typ = "ORG"
        elif slot == "PER":
            text, last_person = _person(rng)
            while text in used:
                text, last_person = _person(rng)
            typ = "PER"
        elif slot == "LAST":
            text, typ = (last_person or pick(rng, LAST)), "PER"
        elif slot == "LOC":
            text = pick(rng, CITIES) if chance(rng, 0.6) else pick(rng, COUNTRIES)
            while text in used:
                text = pick(rng, CITIES + COUNTRIES)
            typ = "LOC"
        else:
            text = plain[slot]
        if typ:
            used.add(text)
            entities.append({"text": text, "type": typ})
        out.append(text)
    out.append(template[pos:])
    return tidy("".join(out)), entities


def make_ner(rng: random.Random, difficulty: float) -> dict[str, Any]:
    """One fin_ner row: a news sentence and its entities in sentence order."""
    if difficulty >= 0.7:
        template = pick(rng, HARD)
        if difficulty >= 0.85 and chance(rng, 0.5):
            template = template.rstrip(".") + pick(rng, JOINERS) + lower_first(pick(rng, EASY))
    elif difficulty >= 0.45:
        template = pick(rng, MEDIUM)
    else:
        template = pick(rng, EASY)
    text, entities = render_entities(rng, template)
    text = re.sub(r"\. ([a-z])", lambda m: ". " + m.group(1).upper(), text)
    text = re.sub(r"^the ", "The ", text)
    return {"input": text, "reference": entities}


# ---------------------------------------------------------------------------------------
# fin_summ: short earnings-call passages
# ---------------------------------------------------------------------------------------
OPENING = [
    "Good morning, everyone, and thank you for joining {company_pos} {q} {year} earnings call.",
    "Before we begin, please note that today's remarks include forward-looking statements.",
    "I'm joined today by our chief financial officer, {cfo}.",
    "Let me now walk you through the numbers.",
]
MIDDLE = [
    "Our teams executed well in a challenging environment.",
    "Demand in our {segment} business remained steady through the quarter.",
    "We remain focused on disciplined capital allocation.",
    "We continue to invest in our people and our technology.",
]
CLOSING = [
    "With that, I'll turn the call over to {cfo}.",
    "Thank you all for your continued support.",
    "We look forward to updating you next quarter.",
    "Operator, we are now ready to take questions.",
]
SEGMENTS = ["retail", "industrial", "cloud", "consumer", "wholesale", "payments", "specialty", "energy services"]


def _fin_numbers(rng: random.Random) -> dict[str, Any]:
    unit = pick(rng, ["million", "billion"])
    rev = rng.randint(120, 990) if unit == "million" else round(rng.uniform(1.1, 9.8), 1)
    # full-year guidance around 4x the quarter, written the way companies write it
    scale = 1.0 if unit == "billion" else 0.001
    lo_b, hi_b = rev * 3.6 * scale, rev * 4.1 * scale
    guide_unit = "billion" if hi_b >= 1.0 else "million"
    if guide_unit == "billion":
        lo, hi = f"{lo_b:.2f}", f"{hi_b:.2f}"
    else:
        lo, hi = str(int(lo_b * 1000)), str(int(hi_b * 1000))
    return {
        "unit": unit,
        "rev": rev,
        "g": rng.randint(2, 24),
        "up": chance(rng, 0.72),
        "eps": f"{rng.uniform(0.12, 3.9):.2f}",
        "eps_prev": f"{rng.uniform(0.1, 3.5):.2f}",
        "lo": lo,
        "hi": hi,
        "guide_unit": guide_unit,
        "div": f"{rng.uniform(0.05, 1.2):.2f}",
        "margin": f"{rng.uniform(18, 61):.1f}",
        "bb": rng.randint(50, 900),
        "seg_rev": rng.randint(40, 400),
    }


def _facts(n: dict[str, Any], q: str) -> dict[str, tuple[str, str]]:
    """fact name -> (passage sentence, summary line); `q` is e.g. "second-quarter"."""
    direction = "up" if n["up"] else "down"
    q_noun = q.replace("-", " ")
    return {
        "revenue": (
            f"Revenue for the {q_noun} came in at ${n['rev']} {n['unit']}, {direction} {n['g']}% from a year ago.",
            f"{q} revenue ${n['rev']} {n['unit']}, {direction} {n['g']}%.",
        ),
        "eps": (
            f"Adjusted earnings per share were ${n['eps']}, compared with ${n['eps_prev']} in the prior-year quarter.",
            f"{q} adjusted EPS ${n['eps']}.",
        ),
        "guidance": (
            f"For the full year, we now expect revenue between ${n['lo']} and ${n['hi']} {n['guide_unit']}.",
            f"Sees full-year revenue ${n['lo']} to ${n['hi']} {n['guide_unit']}.",
        ),
        "dividend": (
            f"The board approved a quarterly dividend of ${n['div']} per share.",
            f"Declares quarterly dividend of ${n['div']} per share.",
        ),
        "margin": (
            f"Gross margin {'expanded' if n['up'] else 'narrowed'} to {n['margin']}% in the quarter.",
            f"{q} gross margin {n['margin']}%.",
        ),
        "buyback": (
            f"We also announced a new share repurchase program of up to ${n['bb']} million.",
            f"Announces share buyback of up to ${n['bb']} million.",
        ),
        "withdrawn": (
            "Given the uncertainty, we are no longer providing guidance for the full year.",
            "Withdraws full-year guidance.",
        ),
    }


DISTRACTORS = [
    "Revenue in the {segment} segment was ${seg_rev} million, broadly in line with last year.",
    "As a reminder, last year we reported earnings per share of ${eps_prev} in this quarter.",
    "Analysts had expected somewhat weaker results.",
    "We do not expect the recent currency moves to change our plans.",
    "Freight and labour costs remained elevated but did not worsen.",
]


def make_summary(rng: random.Random, difficulty: float) -> dict[str, Any]:
    """One fin_summ row: an earnings-call passage (< 150 words) and 1-3 summary lines."""
    company = f"{pick(rng, ORG_STEMS)} {pick(rng, ORG_SUFFIXES)}"
    first, last = pick(rng, FIRST), pick(rng, LAST)
    q = pick(rng, QUARTERS)
    year = str(rng.randint(2019, 2025))
    segment = pick(rng, SEGMENTS)
    nums = _fin_numbers(rng)
    facts = _facts(nums, q)
    slots = {
        "company": company, "company_pos": company + ("'" if company.endswith("s") else "'s"), "q": "Q" + str(QUARTERS.index(q) + 1), "year": year, "cfo": f"{first} {last}",
        "segment": segment, "seg_rev": nums["seg_rev"], "eps_prev": nums["eps_prev"],
    }
    if difficulty >= 0.7:
        key = ["revenue", pick(rng, ["eps", "margin"]), pick(rng, ["guidance", "withdrawn", "buyback"])]
        n_fill, n_distract = 3, 2
    elif difficulty >= 0.45:
        key = ["revenue", pick(rng, ["eps", "dividend", "guidance"])]
        n_fill, n_distract = 3, 1
    else:
        key = ["revenue"] + ([pick(rng, ["eps", "dividend", "guidance", "buyback"])] if chance(rng, 0.6) else [])
        n_fill, n_distract = 2, 0
    others = [f for f in ("dividend", "buyback") if f not in key]
    body = [facts[k][0] for k in key]
    extras = [d.format(**slots) for d in rng.sample(DISTRACTORS, n_distract)]
    extras += [m.format(**slots) for m in rng.sample(MIDDLE, n_fill - 2)]
    for sentence in extras:
        body.insert(rng.randrange(len(body) + 1), sentence)
    if difficulty >= 0.85 and others:
        # a non-headline fact mentioned only conditionally: not part of the summary
        body.append(f"We may also consider a {others[0]} later in the year, but no decision has been made.")
    opening = pick(rng, OPENING).format(**slots)
    closing = pick(rng, CLOSING).format(**slots)
    sentences = [opening, *body, closing]
    headline = {facts[k][0] for k in key}
    while word_count(" ".join(sentences)) >= 150:  # keep sources short: drop non-headline lines
        droppable = [i for i, x in enumerate(sentences) if x not in headline]
        if not droppable:
            break
        del sentences[droppable[-1]]
    return {
        "input": "\n".join(sentences),
        "reference": "\n".join(cap_first(facts[k][1]) for k in key),
        "company": company,
    }
