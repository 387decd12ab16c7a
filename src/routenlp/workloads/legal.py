"""Legal grammar: contract clauses by type (legal_clause) and terms-of-service sentences
by consumer risk (legal_risk, CLAUDETTE-style fair / potentially_unfair / clearly_unfair).

Hard clause rows cross-reference other clause types ("Without prejudice to the Governing
Law section, ...") and add boilerplate; hard risk rows use negation and mixed signals
(a scary verb that is constrained, or a friendly preamble before an unfair term).
"""

from __future__ import annotations

import random
from typing import Any

from routenlp.workloads._common import cap_first, chance, lower_first, pick, render, tidy, weighted

PARTY_A = ["the Company", "Supplier", "the Licensor", "the Distributor", "Provider", "the Seller", "the Consultant", "the Manufacturer"]
PARTY_B = ["the Customer", "Licensee", "the Reseller", "Purchaser", "the Client", "Buyer", "the Agent", "the Franchisee"]
STATES = [
    "the State of New York", "the State of Delaware", "England and Wales", "the Province of Ontario",
    "the State of California", "Singapore", "the State of Texas", "Ireland", "the State of Illinois",
    "Switzerland", "the Commonwealth of Massachusetts", "the Netherlands",
]
PERIODS = [
    "thirty (30) days", "sixty (60) days", "ninety (90) days", "ten (10) business days",
    "six (6) months", "fifteen (15) days", "forty-five (45) days", "one hundred twenty (120) days",
]
TERMS = ["one (1) year", "two (2) years", "three (3) years", "five (5) years", "twelve (12) months", "eighteen (18) months"]
TERRITORIES = ["the Territory", "North America", "the European Union", "the United Kingdom", "Latin America", "Asia-Pacific", "the United States"]
MONEY = ["$500,000", "$1,000,000", "$250,000", "$2,000,000", "$5,000,000", "$100,000", "$750,000", "$3,000,000"]
CAPS = [
    "the fees paid in the twelve (12) months preceding the claim", "{money}",
    "two times the annual fees", "the amounts paid under this Agreement",
    "the total fees payable in the then-current year",
]
PRODUCTS = ["the Products", "the Software", "the Services", "the Licensed Technology", "the Equipment", "the Deliverables"]

CLAUSES: dict[str, dict[str, Any]] = {
    "Governing Law": {
        "w": 10,
        "t": [
            "This Agreement shall be governed by and construed in accordance with the laws of {state}, without regard to its conflict of laws principles.",
            "The validity and interpretation of this Agreement shall be governed by the laws of {state}.",
            "All matters arising out of or relating to this Agreement are governed by the laws of {state}.",
            "This Agreement and any dispute arising from it shall be governed by the law of {state}.",
        ],
    },
    "Termination For Convenience": {
        "w": 8,
        "t": [
            "Either party may terminate this Agreement for any reason upon {period} prior written notice to the other party.",
            "{A} may terminate this Agreement at any time, without cause, by giving {B} {period} written notice.",
            "{B} may terminate this Agreement for convenience on {period} notice to {A}.",
            "This Agreement may be terminated by either party without cause upon {period} written notice.",
        ],
    },
    "Anti-Assignment": {
        "w": 8,
        "t": [
            "{B} may not assign or transfer this Agreement without the prior written consent of {A}.",
            "Neither party shall assign any of its rights or obligations hereunder without the other party's prior written consent, which shall not be unreasonably withheld.",
            "{B} shall not assign, delegate or otherwise transfer this Agreement, and any attempted assignment without consent shall be null and void.",
        ],
    },
    "Cap On Liability": {
        "w": 7,
        "t": [
            "In no event shall {A}'s total liability under this Agreement exceed {cap}.",
            "Each party's aggregate liability arising out of this Agreement shall be limited to {cap}.",
            "{A}'s maximum cumulative liability for all claims shall not exceed {cap}.",
        ],
    },
    "Confidentiality": {
        "w": 7,
        "t": [
            "{B} shall keep all Confidential Information of {A} strictly confidential and shall not disclose it to any third party.",
            "Each party agrees to use the other party's Confidential Information solely for the purposes of this Agreement.",
            "The receiving party shall protect the disclosing party's Confidential Information with at least reasonable care for {term} after disclosure.",
        ],
    },
    "Renewal Term": {
        "w": 5,
        "t": [
            "This Agreement shall automatically renew for successive periods of {term} unless either party gives notice of non-renewal at least {period} before the end of the then-current term.",
            "Upon expiry of the Initial Term, this Agreement will renew for an additional {term}.",
            "The term shall be extended automatically for further periods of {term} each.",
        ],
    },
    "Audit Rights": {
        "w": 5,
        "t": [
            "{A} may, upon {period} notice, audit the books and records of {B} relating to this Agreement.",
            "{B} shall maintain accurate records and make them available for inspection by {A} during normal business hours.",
            "{A} or its independent auditor may examine {B}'s records no more than once per calendar year.",
        ],
    },
    "Non-Compete": {
        "w": 4,
        "t": [
            "During the term of this Agreement and for {term} thereafter, {B} shall not engage in any business that competes with {A} in {territory}.",
            "{B} agrees not to develop, market or sell any product that competes with {product} during the Term.",
        ],
    },
    "Insurance": {
        "w": 4,
        "t": [
            "{B} shall maintain, at its own expense, general liability insurance with coverage of at least {money} per occurrence.",
            "Each party shall carry adequate insurance and provide certificates of insurance upon request.",
            "{A} shall maintain product liability insurance of not less than {money} and name {B} as an additional insured.",
        ],
    },
    "Exclusivity": {
        "w": 3,
        "t": [
            "{A} appoints {B} as its exclusive distributor of {product} in {territory}.",
            "During the Term, {A} shall not appoint any other reseller of {product} in {territory}.",
        ],
    },
    "Liquidated Damages": {
        "w": 1.5,
        "t": [
            "If {A} fails to deliver {product} by the Delivery Date, it shall pay {B} liquidated damages of {money} per week of delay.",
            "The parties agree that {money} represents a genuine pre-estimate of loss and shall be payable as liquidated damages.",
        ],
    },
    "Non-Disparagement": {
        "w": 1,
        "t": [
            "Neither party shall make any public statement that disparages the other party or {product}.",
            "{B} shall not make any negative or derogatory statements about {A}, its officers or employees.",
        ],
    },
}
CLAUSE_LABELS = sorted(CLAUSES)
CROSS_REFS = [
    "Without prejudice to Section {n} (Governing Law), ",
    "Subject to the confidentiality obligations in Section {n}, ",
    "Except as set out in the Insurance section, ",
    "Notwithstanding any renewal of this Agreement, ",
    "Save for the audit rights described in Section {n}, ",
    "Without limiting any cap on liability, ",
]
BOILERPLATE = [
    "The parties acknowledge that this provision has been specifically negotiated.",
    "This Section shall survive the expiration or termination of this Agreement.",
    "Headings are for convenience only and do not affect interpretation.",
    "Capitalised terms have the meaning given in Schedule {n}.",
]


def _clause_slots(rng: random.Random) -> dict[str, str]:
    slots = {
        "A": pick(rng, PARTY_A),
        "B": pick(rng, PARTY_B),
        "state": pick(rng, STATES),
        "period": pick(rng, PERIODS),
        "term": pick(rng, TERMS),
        "territory": pick(rng, TERRITORIES),
        "money": pick(rng, MONEY),
        "product": pick(rng, PRODUCTS),
        "n": f"{rng.randint(2, 19)}.{rng.randint(1, 9)}",
    }
    slots["cap"] = render(pick(rng, CAPS), slots)
    return slots


def _section_prefix(rng: random.Random) -> str:
    return f"{rng.randint(1, 24)}.{rng.randint(1, 12)} " if chance(rng, 0.6) else ""


def make_clause(rng: random.Random, difficulty: float) -> dict[str, Any]:
    """One legal_clause row: a clause and its type."""
    power = 1.0 if difficulty < 0.7 else 0.2
    label = weighted(rng, {k: v["w"] ** power for k, v in CLAUSES.items()})
    slots = _clause_slots(rng)
    body = cap_first(render(pick(rng, CLAUSES[label]["t"]), slots))
    if difficulty < 0.3 and chance(rng, 0.35):
        text = f"{_section_prefix(rng)}{label}. {body}"
    elif difficulty >= 0.7:
        text = render(pick(rng, CROSS_REFS), slots) + lower_first(body)
        if chance(rng, 0.7):
            text += " " + render(pick(rng, BOILERPLATE), slots)
        text = _section_prefix(rng) + text
    elif difficulty >= 0.45:
        text = _section_prefix(rng) + body + " " + render(pick(rng, BOILERPLATE), slots)
    else:
        text = _section_prefix(rng) + body
    return {"input": tidy(text), "reference": label}


# ---------------------------------------------------------------------------------------
# legal_risk: consumer terms of service
# ---------------------------------------------------------------------------------------
RISK_LABELS = ["clearly_unfair", "fair", "potentially_unfair"]
SERVICES = ["the App", "the Service", "our Platform", "the Website", "the Site", "our services", "the Marketplace"]
COMPANIES = ["Streamly", "Fotogram", "Quickcart", "Ridewise", "Notely", "Playverse", "Tunebox", "Cloudnest", "Bookwise", "Fitloop"]
FAR = ["Santa Clara County, California", "Dublin, Ireland", "the Cayman Islands", "Singapore", "Luxembourg", "Delaware"]

# label -> list of (template, tags)
RISK: dict[str, list[tuple[str, list[str]]]] = {
    "fair": [
        ("You can cancel your subscription at any time from your account settings.", []),
        ("These terms apply to your use of {svc} and any related services.", []),
        ("We will give you at least {days} days' notice before any change to these terms takes effect.", []),
        ("If you live in the European Union, you may bring a claim in the courts of your country of residence.", ["j1"]),
        ("Nothing in these terms limits our liability for death or personal injury caused by our negligence.", ["ltd1"]),
        ("You keep ownership of the content you upload to {svc}.", []),
        ("Please read these terms carefully before using {svc}.", []),
        ("You may contact our support team at any time if you have questions about these terms.", []),
        ("These terms are governed by the laws of the country where you live.", ["law1"]),
        ("{co} will refund any unused part of a prepaid subscription if you cancel within {days} days.", []),
        ("You must be at least {age} years old to create an account on {svc}.", []),
        ("We use your email address to send you receipts and important account notices.", []),
    ],
    "potentially_unfair": [
        ("By using {svc}, you agree to be bound by these terms.", ["use2"]),
        ("We may change these terms from time to time, and your continued use of {svc} means you accept the changes.", ["ch2"]),
        ("We may suspend or terminate your account if we believe you have breached these terms.", ["ter2"]),
        ("To the fullest extent permitted by law, {co} is not liable for any indirect or consequential losses.", ["ltd2"]),
        ("We may remove content that we consider inappropriate.", ["cr2"]),
        ("These terms are governed by the laws of {far}.", ["law2"]),
        ("Any dispute arising from these terms will be resolved by binding arbitration.", ["a2"]),
        ("{co} may modify or discontinue {svc}, in whole or in part, with or without notice.", ["ch2"]),
        ("{co} is not responsible for any loss of data resulting from your use of {svc}.", ["ltd2"]),
    ],
    "clearly_unfair": [
        ("We may terminate your account at any time, for any reason or no reason, without notice.", ["ter3"]),
        ("{co} shall not be liable for any damages whatsoever, even if caused by our gross negligence.", ["ltd3"]),
        ("Any dispute must be brought exclusively in the courts of {far}, regardless of where you live.", ["j3"]),
        ("We may delete your content at our sole discretion without notice and without any liability to you.", ["cr3"]),
        ("You waive any right to a class action, and all disputes will be decided by an arbitrator chosen by {co}.", ["a3"]),
        ("We may change these terms at any time without notifying you, and the changes apply immediately.", ["ch3"]),
    ],
}
# hard rows: negation and mixed signals
RISK_HARD: dict[str, list[tuple[str, list[str]]]] = {
    "fair": [
        ("We will never terminate your account without first giving you notice and a reason.", []),
        ("Although we may update these terms, changes only apply after we have notified you and you have accepted them.", []),
        ("We do not remove your content unless a court orders us to, and we will tell you if that happens.", []),
        ("Arbitration is optional: you may always choose to bring your claim in your local court instead.", ["j1"]),
        ("We are liable for losses caused by our breach of these terms, except losses that were not foreseeable.", ["ltd1"]),
    ],
    "potentially_unfair": [
        ("We want {svc} to be a safe place, so we may suspend accounts that we think are being misused.", ["ter2"]),
        ("We try hard to keep {svc} running, but we are not liable for any downtime or lost profits.", ["ltd2"]),
        ("We value your feedback; however, we may update these terms and will post the new version on this page.", ["ch2"]),
        ("Your use of {svc} after we publish changes means you accept the new terms, even if you have not read them.", ["ch2", "use2"]),
    ],
    "clearly_unfair": [
        ("We care about our community, which is why we may delete any account at our sole discretion, without notice or refund.", ["ter3"]),
        ("While we aim to offer a great service, {co} accepts no liability of any kind, including for fraud or gross negligence.", ["ltd3"]),
        ("For your convenience, all claims must be filed only in {far}, and you give up the right to sue in your home courts.", ["j3"]),
    ],
}
RISK_PREFIXES = ["", "", "", "Please note that ", "Important: ", "In these Terms, ", "For the avoidance of doubt, "]


def make_risk(rng: random.Random, difficulty: float) -> dict[str, Any]:
    """One legal_risk row: a terms-of-service sentence and its fairness label."""
    hard = difficulty >= 0.7
    weights = {"fair": 1.0, "potentially_unfair": 1.0, "clearly_unfair": 1.0} if hard else {
        "fair": 6.0, "potentially_unfair": 3.0, "clearly_unfair": 0.8,
    }
    label = weighted(rng, weights)
    pool = RISK_HARD[label] if hard and chance(rng, 0.75) else RISK[label]
    template, tags = pick(rng, pool)
    slots = {
        "svc": pick(rng, SERVICES),
        "co": pick(rng, COMPANIES),
        "far": pick(rng, FAR),
        "days": str(pick(rng, [7, 14, 15, 30, 45, 60])),
        "age": str(pick(rng, [13, 16, 18])),
    }
    body = render(template, slots)
    prefix = pick(rng, RISK_PREFIXES)
    text = prefix + (lower_first(body) if prefix and not prefix.endswith(": ") else body)
    section = f"{rng.randint(1, 30)}.{rng.randint(1, 15)} " if chance(rng, 0.5) else ""
    text = tidy(section + cap_first(text))
    if difficulty >= 0.45 and not hard and chance(rng, 0.5):
        text += " " + pick(rng, ["This applies to all users.", "See also our Privacy Policy.", "This section applies worldwide."])
    return {"input": text, "reference": label, "categories": sorted(tags)}
