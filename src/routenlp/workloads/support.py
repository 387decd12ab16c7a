"""Customer-service grammar: banking-style messages for cs_intent and cs_reply.

Each intent has message templates and reply templates over the same slots, so a reply
reference mentions the card, amount or merchant of its own message. Difficulty adds
context, a distractor sentence about another intent (stated as resolved or negated), a
second request (cs_reply), lower-casing and typos; hard rows also draw rare intents far
more often than routine rows do.
"""

from __future__ import annotations

import random
import re
from typing import Any

from routenlp.workloads._common import (
    cap_first,
    chance,
    lower_first,
    money,
    pick,
    render,
    tidy,
    typo,
    weighted,
)

CARDS = [
    "debit card", "credit card", "virtual card", "Visa card", "Mastercard", "new card",
    "replacement card", "business card", "travel card", "contactless card", "premium card",
]
MERCHANTS = [
    "an online shop", "a petrol station", "the supermarket", "a hotel in Lisbon", "a taxi app",
    "a streaming service", "an airline", "the pharmacy", "a hardware store", "a restaurant",
    "a bookshop", "a car rental company", "the gym", "a furniture store", "an electronics shop",
    "a train ticket machine", "a parking meter", "a food delivery app", "a clothing website",
    "a concert ticket site", "a garden centre", "a phone provider",
]
WHEN = [
    "yesterday", "this morning", "last Friday", "two days ago", "on Monday", "last week",
    "earlier today", "on the weekend", "three days ago", "last night", "on Tuesday",
    "at lunchtime", "a few hours ago", "on Sunday",
]
DAYS = ["a week", "two weeks", "ten days", "five days", "over a week", "nearly three weeks", "six days"]
RECIPIENTS = [
    "my landlord", "my sister", "a friend abroad", "my business partner", "the tax office",
    "my son at university", "my brother", "a supplier", "my mother", "a colleague",
    "my daughter", "a client",
]
COUNTRIES = [
    "Spain", "Japan", "the US", "Canada", "Mexico", "Germany", "Thailand", "Australia",
    "Turkey", "Morocco", "Brazil", "Norway", "Vietnam", "Poland",
]
CURRENCIES = ["euros", "dollars", "yen", "pounds", "Swiss francs", "pesos", "Canadian dollars"]
DETAILS = ["address", "phone number", "email address", "surname", "home address", "mobile number"]
PLACES = [
    "the train station", "a bar", "the airport", "the gym", "a shopping centre", "the office",
    "a taxi", "the beach", "a festival", "the bus",
]
OPENERS = ["", "", "Hi,", "Hello,", "Hey,", "Good morning.", "Hi there.", "Quick question:", "Hello team,"]
CLOSERS = ["", "", "Thanks.", "Thank you!", "Please help.", "Cheers.", "Thanks in advance.", "Any ideas?"]
CONTEXT = [
    "I've been a customer for {years} years and this has never happened before.",
    "I'm travelling at the moment so I can't visit a branch.",
    "I already tried restarting the app and logging in again.",
    "I have an important bill to pay {when2}.",
    "Your chat bot couldn't help me with this.",
    "I'm a bit stressed because I need the money soon.",
]

# intent -> (routine weight, message templates, reply templates, distractor sentences)
INTENTS: dict[str, dict[str, Any]] = {
    "card_arrival": {
        "w": 10,
        "msg": [
            "My {card} still hasn't arrived after {days}.",
            "When will my {card} be delivered?",
            "I ordered a {card} {when} and it's not here yet.",
            "Is there a way to track the delivery of my {card}?",
            "How long does it take for a {card} to arrive?",
            "Still waiting on the {card} you sent out {when}.",
            "It's been {days} and there is no sign of my {card} in the post.",
        ],
        "reply": [
            "I'm sorry your {card} hasn't arrived yet. Cards usually arrive within 7 working days. If it is still missing after that, let us know and we will cancel it and send a free replacement.",
            "Thanks for your patience. A {card} normally takes up to 7 working days to arrive, and you can follow its status in the app under Cards. If it has not arrived by then, we will send a new one.",
        ],
        "distract": ["My {card} arrived on time, no problem there.", "I got the new card in the post already."],
    },
    "activate_card": {
        "w": 8,
        "msg": [
            "How do I activate my {card}?",
            "My {card} just arrived, what do I need to do to start using it?",
            "I can't find where to activate the {card} in the app.",
            "Where in the app do I turn on my {card}?",
            "The {card} came {when} - how do I get it working?",
            "What are the steps to activate a {card}?",
        ],
        "reply": [
            "Welcome to your {card}! To activate it, open the app, go to Cards, select the new card and tap Activate, then enter the code printed on the letter. It is ready to use straight away.",
            "You can activate your {card} in the app: tap Cards, choose the card and follow the Activate steps. Once that is done you can pay with it immediately.",
        ],
        "distract": ["I already activated my old card without any trouble.", "The card activation went fine last time."],
    },
    "lost_or_stolen_card": {
        "w": 8,
        "msg": [
            "I think my {card} was stolen {when}.",
            "I lost my {card} at {place}, please block it.",
            "Someone took my wallet with my {card} in it {when}.",
            "Can you freeze my {card}? I can't find it anywhere.",
            "My {card} went missing {when}, what should I do?",
            "I left my {card} in {place} and now it's gone.",
        ],
        "reply": [
            "I'm sorry to hear that. Please freeze your {card} right away in the app under Cards, then report it as lost or stolen and we will send you a replacement. Any payments you did not make will be investigated.",
            "Please lock the {card} in the app now so nobody can use it. After that, tap Report lost or stolen and we will cancel it and post a new card to you.",
        ],
        "distract": ["I haven't lost any cards, I know exactly where they are.", "My card is safe in my wallet."],
    },
    "change_pin": {
        "w": 6,
        "msg": [
            "How can I change the PIN on my {card}?",
            "I want to set a new PIN for my {card}.",
            "Is it possible to choose my own PIN?",
            "Where do I update my card PIN?",
            "I'd like to change my PIN because it's too easy to guess.",
        ],
        "reply": [
            "You can change your PIN at any of our cash machines under PIN services. The new PIN works straight away for chip and PIN payments.",
            "You can change the PIN for your {card} at any of our ATMs: insert the card, choose PIN services and follow the steps. You can also view your current PIN in the app under Cards.",
            "To set a new PIN, use PIN services at any cash machine with your {card}. The new PIN works immediately for chip and PIN payments.",
        ],
        "distract": ["I know my PIN, that's not the issue.", "I changed my PIN last month without problems."],
    },
    "declined_payment": {
        "w": 9,
        "msg": [
            "My {card} was declined at {merchant} {when}.",
            "Why did my payment of {amount} at {merchant} get declined?",
            "The card keeps getting rejected when I try to pay at {merchant}.",
            "I tried to pay {amount} {when} but the transaction was refused.",
            "Payment declined again at {merchant}, what is going on?",
        ],
        "reply": [
            "Sorry about the declined payment. Please check that your card is not frozen, that your balance covers the payment and that no spending limit was reached, then try again.",
            "I'm sorry your payment of {amount} was declined. This usually happens when the card is frozen, the balance is too low or a spending limit is reached. Please check these in the app and try again.",
            "Payments can be declined for security reasons, a low balance or card limits. Please check your {card} settings in the app; if everything looks fine, contact us and we will look into the payment at {merchant}.",
        ],
        "distract": ["Card payments usually go through fine for me.", "My payments at {merchant} worked before."],
    },
    "transfer_not_received": {
        "w": 7,
        "msg": [
            "I sent {amount} to {recipient} {when} but they haven't received it.",
            "My transfer to {recipient} still hasn't arrived.",
            "{Recipient} says the {amount} I transferred never showed up.",
            "Where is the money I sent to {recipient} {when}?",
            "The bank transfer of {amount} to {recipient} has not arrived yet.",
        ],
        "reply": [
            "Transfers usually arrive within one working day, but some take up to 3 days. If the money has still not arrived, send us the transfer details and we will trace the payment.",
            "Transfers usually arrive within one working day, but some can take up to 3 days. If the {amount} has not reached {recipient} by then, send us the transfer details and we will trace it.",
            "I'm sorry the transfer to {recipient} hasn't arrived. Please check the account details in the app; if they are correct, we can open a trace on the payment of {amount}.",
        ],
        "distract": ["My transfers to {recipient} normally arrive quickly.", "Sending money has always worked well."],
    },
    "exchange_rate": {
        "w": 5,
        "msg": [
            "What exchange rate do you use when I pay in {country}?",
            "How much will I get if I convert {amount} to {currency}?",
            "Is the exchange rate fixed when I spend abroad in {country}?",
            "Do you add a margin on the exchange rate for {currency}?",
        ],
        "reply": [
            "We convert card payments at the live interbank exchange rate with no hidden margin on weekdays. You can check the exact rate in the app before you pay.",
            "We use the interbank exchange rate at the time of the payment, so the rate you get in {country} is close to the market rate. You can see the live rate in the app before you pay.",
            "Card payments in {currency} are converted at the live market rate with no hidden margin on weekdays. The app shows the exact rate for each payment.",
        ],
        "distract": ["I'm not worried about the exchange rate.", "I know how currency conversion works."],
    },
    "request_refund": {
        "w": 6,
        "msg": [
            "I want a refund for the {amount} I paid to {merchant}.",
            "How do I get my money back from {merchant}? The order never came.",
            "Can you help me get a refund for a purchase of {amount} {when}?",
            "{merchant_cap} won't refund me the {amount}, can you help?",
        ],
        "reply": [
            "Refunds come from the merchant, so please contact them first. If they do not respond within 14 days, open a dispute for the payment in the app and we will handle it.",
            "I'm sorry about your purchase. Please ask {merchant} for a refund first; if they do not respond within 14 days, open a dispute in the app for the {amount} payment and we will handle it.",
            "Refunds are issued by the merchant, so please contact {merchant} first. If that fails, you can raise a chargeback for the {amount} from the transaction screen in the app.",
        ],
        "distract": ["I'm not asking for a refund.", "I got my refund from the last shop already."],
    },
    "unrecognised_charge": {
        "w": 6,
        "msg": [
            "There's a payment of {amount} to {merchant} that I don't recognise.",
            "I see a charge from {merchant} {when} that I never made.",
            "Who took {amount} from my account {when}? I didn't buy anything.",
            "There's a strange {amount} transaction on my statement.",
        ],
        "reply": [
            "Please freeze your card in the app straight away and report the payment as not recognised. We will investigate and refund it if it was fraud.",
            "Please freeze your {card} in the app straight away. Unknown payments are sometimes shown under a different merchant name, so check with anyone who uses your card; if the {amount} is still unknown, report it and we will investigate.",
            "I understand your concern. Please lock your card in the app and report the {amount} payment as not recognised. We will investigate and refund it if it was fraud.",
        ],
        "distract": ["All the other charges on my statement look right.", "I recognise every payment except one."],
    },
    "top_up_failed": {
        "w": 4,
        "msg": [
            "My top-up of {amount} failed {when}.",
            "I tried to add {amount} to my account but the top-up didn't go through.",
            "Why won't my top up work with my {card}?",
            "The app says my top-up was unsuccessful.",
        ],
        "reply": [
            "A failed top-up is usually declined by the bank that issued your card. Please check the card details and try again; no money is taken for a failed top-up.",
            "Sorry your top-up of {amount} failed. This can happen if your bank declined it or the card has expired. Please check the card details in the app and try again; no money is taken for a failed top-up.",
            "A failed top-up is usually declined by the bank that issued the card. Please try again or use a bank transfer instead; the {amount} will not be charged.",
        ],
        "distract": ["Topping up used to work fine.", "My top-ups are normally instant."],
    },
    "update_personal_details": {
        "w": 4,
        "msg": [
            "How do I change my {detail}?",
            "I moved house and need to update my {detail}.",
            "My {detail} is wrong in the app, can I edit it?",
            "I need to correct the {detail} on my account.",
        ],
        "reply": [
            "You can update your {detail} in the app under Profile, then Personal details. Some changes need a quick identity check before they are saved.",
            "To change your {detail}, open Profile in the app and tap Edit. If the field is locked, send us a photo of a document that shows the new details.",
        ],
        "distract": ["My personal details are all correct.", "I updated my email last year."],
    },
    "close_account": {
        "w": 2,
        "msg": [
            "I want to close my account.",
            "How do I delete my account and withdraw the remaining {amount}?",
            "Please cancel my account, I'm moving to another bank.",
            "I no longer need this account, how do I shut it down?",
        ],
        "reply": [
            "We are sorry to see you go. Please move any remaining balance out first, then open Profile in the app and tap Close account. The closure is confirmed by email.",
            "You can close your account from the app under Profile. Please withdraw your remaining balance of {amount} first, as we cannot close an account with money in it.",
        ],
        "distract": ["I don't want to close my account.", "I'm happy with the account overall."],
    },
    "cash_withdrawal_fee": {
        "w": 1.5,
        "msg": [
            "Why was I charged a fee for taking out {amount} at an ATM?",
            "Is there a charge for cash withdrawals in {country}?",
            "I got charged for using the cash machine {when}.",
            "How much do you charge for ATM withdrawals?",
        ],
        "reply": [
            "Withdrawals are free up to your monthly allowance; after that a 2% fee applies. Some ATM operators in {country} also add their own fee, which is shown on the machine.",
            "A fee applies once you go over the free withdrawal allowance of your plan. You can check your remaining allowance in the app under Plan.",
        ],
        "distract": ["I know card payments are free.", "I don't use cash machines much."],
    },
    "verify_identity": {
        "w": 1.5,
        "msg": [
            "Why do I need to verify my identity?",
            "The app keeps rejecting my ID photo during verification.",
            "What documents do you accept to verify who I am?",
            "My identity check has been pending for {days}.",
        ],
        "reply": [
            "We are required by law to verify every customer. Please use a valid passport or national ID card, take the photo in good light and make sure all four corners are visible.",
            "Identity checks usually finish within a few hours. Make sure your document is valid and the photo is sharp; if it keeps failing, reply here and an agent will check it manually.",
        ],
        "distract": ["I verified my identity when I signed up.", "My ID documents are all valid."],
    },
}
INTENT_LABELS = sorted(INTENTS)


def _slots(rng: random.Random) -> dict[str, str]:
    recipient = pick(rng, RECIPIENTS)
    merchant = pick(rng, MERCHANTS)
    return {
        "card": pick(rng, CARDS),
        "merchant": merchant,
        "merchant_cap": cap_first(merchant),
        "when": pick(rng, WHEN),
        "when2": pick(rng, ["tomorrow", "this week", "on Friday", "tonight"]),
        "days": pick(rng, DAYS),
        "recipient": recipient,
        "Recipient": cap_first(recipient),
        "country": pick(rng, COUNTRIES),
        "currency": pick(rng, CURRENCIES),
        "detail": pick(rng, DETAILS),
        "place": pick(rng, PLACES),
        "amount": money(rng),
        "years": str(rng.randint(2, 15)),
    }


def _pick_intent(rng: random.Random, difficulty: float, exclude: str | None = None) -> str:
    # routine rows follow a skewed intent mix; hard rows flatten it so rare intents appear
    power = 1.0 if difficulty < 0.7 else 0.25
    weights = {k: v["w"] ** power for k, v in INTENTS.items() if k != exclude}
    return weighted(rng, weights)


def _message(
    rng: random.Random, intent: str, slots: dict[str, str], difficulty: float, main: str | None = None
) -> str:
    if main is None:
        main = render(pick(rng, INTENTS[intent]["msg"]), slots)
    parts: list[str] = []
    opener = pick(rng, OPENERS)
    if opener:
        parts.append(opener)
    if difficulty >= 0.45 and chance(rng, 0.7):
        parts.append(render(pick(rng, CONTEXT), slots))
    if difficulty >= 0.7:
        other = _pick_intent(rng, 0.0, exclude=intent)
        distract = render(pick(rng, INTENTS[other]["distract"]), slots)
        if chance(rng, 0.5):
            parts.append(distract)
            parts.append(pick(rng, ["But", "However,", "Anyway,", "The thing is,"]) + " " + lower_first(main))
        else:
            parts.append(main)
            parts.append(pick(rng, ["Just to be clear,", "To be clear,", "By the way,"]) + " " + lower_first(distract))
    else:
        parts.append(main)
    closer = pick(rng, CLOSERS)
    if closer:
        parts.append(closer)
    if len(parts) > 1 and parts[0].endswith(","):
        parts[1] = lower_first(parts[1])
    text = tidy(" ".join(parts))
    if difficulty >= 0.6 and chance(rng, 0.4):
        text = text.lower()
    if difficulty >= 0.8 and chance(rng, 0.6):
        text = typo(rng, text, n=1 + int(difficulty >= 0.9))
    return text


def make_intent(rng: random.Random, difficulty: float) -> dict[str, Any]:
    """One cs_intent row: a customer message and its intent label."""
    intent = _pick_intent(rng, difficulty)
    slots = _slots(rng)
    return {"input": _message(rng, intent, slots, difficulty), "reference": intent}


_SLOT = re.compile(r"\{(\w+)\}")


def _request(rng: random.Random, intent: str, slots: dict[str, str]) -> tuple[str, str]:
    """(message sentence, matching reply): the reply only mentions slots (card, amount,
    merchant, ...) that the message itself mentions, so the reference never invents facts."""
    template = pick(rng, INTENTS[intent]["msg"])
    used = set(_SLOT.findall(template))
    fitting = [r for r in INTENTS[intent]["reply"] if set(_SLOT.findall(r)) <= used]
    return render(template, slots), render(pick(rng, fitting), slots)


def make_reply(rng: random.Random, difficulty: float) -> dict[str, Any]:
    """One cs_reply row: a message (one or, when hard, two requests) and a reference reply."""
    intent = _pick_intent(rng, difficulty)
    slots = _slots(rng)
    ask, reply = _request(rng, intent, slots)
    extra: dict[str, Any] = {"intent": intent}
    if difficulty >= 0.7:  # two requests in one message; the reply answers both
        second = _pick_intent(rng, 0.0, exclude=intent)
        ask2, reply2 = _request(rng, second, slots)
        ask = f"{ask} {pick(rng, ['Also,', 'One more thing:', 'And'])} {lower_first(ask2)}"
        first_two = ". ".join(reply2.split(". ")[:2]).rstrip(".")
        reply = f"{reply} As for your other question: {first_two}."
        extra["intent_2"] = second
    message = _message(rng, intent, slots, min(difficulty, 0.69), main=ask)
    if difficulty >= 0.7 and chance(rng, 0.4):
        message = message.lower()
    return {"input": message, "reference": reply, **extra}
