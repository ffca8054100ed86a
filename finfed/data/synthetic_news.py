"""finfed's own synthetic financial-news sentiment data (the embedded default).

Deterministic for a given seed. Each institution writes in its own register
(newswire, broker notes, retail desk, ...) and sees its own label mix, so the
federation is non-IID the way real consortia are. Every row says it is synthetic.
Sentiment follows the financial reading of the event, not word polarity: a loss
that *narrowed* is positive news, a cost that *rose* is negative.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

LABELS = ("negative", "neutral", "positive")

COMPANIES = [
    "Aurora Capital", "Baltic Shipping", "Cedar Foods", "Delta Paper", "Eastway Telecom",
    "Fjord Energy", "Granite Insurance", "Harbor Retail", "Ivory Pharma", "Juniper Steel",
    "Kestrel Software", "Lumen Utilities", "Meridian Bank", "Nordic Timber", "Orion Logistics",
    "Pioneer Mining", "Quarry Cement", "Riverside Media", "Summit Airlines", "Tundra Chemicals",
]
TICKERS = {name: "$" + "".join(w[:2] for w in name.split()).upper() for name in COMPANIES}
GROWTH_METRICS = ["net sales", "operating profit", "revenue", "order intake", "net profit",
                  "earnings per share", "EBITDA", "comparable sales", "cash flow"]
COST_METRICS = ["operating costs", "net debt", "credit losses", "raw material costs", "impairments"]
CURRENCIES = ["EUR", "USD", "SEK", "GBP"]
PERIODS = ["the first quarter", "the second quarter", "the third quarter", "the fourth quarter",
           "the first half", "the full year", "January-September"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ROLES = ["CFO", "CEO", "head of investor relations", "chairman", "COO"]
PEOPLE = ["Anna Virtanen", "Lars Berg", "Maria Costa", "John Hale", "Sofia Lind", "Peter Novak"]


@dataclass(frozen=True)
class Institution:
    """One synthetic site: a writing register and a label mix."""

    style: str
    label_mix: tuple[float, float, float]  # P(negative), P(neutral), P(positive)


INSTITUTIONS = [
    Institution("newswire", (0.20, 0.55, 0.25)),
    Institution("broker_note", (0.35, 0.20, 0.45)),
    Institution("retail_desk", (0.25, 0.25, 0.50)),
    Institution("credit_desk", (0.45, 0.35, 0.20)),
]


def _amount(rng: random.Random) -> str:
    return f"{rng.choice(CURRENCIES)} {rng.uniform(0.5, 950):.1f} {rng.choice(['mn', 'million', 'bn'])}"


def _pct(rng: random.Random) -> str:
    return f"{rng.uniform(0.5, 45):.1f} %"


def _fact(label: str, rng: random.Random) -> str:
    """A financial event whose sentiment is ``label``."""
    company, metric, period = rng.choice(COMPANIES), rng.choice(GROWTH_METRICS), rng.choice(PERIODS)
    cost = rng.choice(COST_METRICS)
    if label == "positive":
        options = [
            f"{company}'s {metric} rose by {_pct(rng)} to {_amount(rng)} in {period}",
            f"{company} reported {metric} of {_amount(rng)}, up from {_amount(rng)} a year earlier",
            f"{company} won a contract worth {_amount(rng)}",
            f"{company}'s operating loss narrowed to {_amount(rng)} in {period}",
            f"{company}'s {cost} decreased by {_pct(rng)}",
            f"{company} raised its outlook for {period}",
            f"{company} increased its dividend to {_amount(rng)}",
        ]
    elif label == "negative":
        options = [
            f"{company}'s {metric} fell by {_pct(rng)} to {_amount(rng)} in {period}",
            f"{company} reported {metric} of {_amount(rng)}, down from {_amount(rng)} a year earlier",
            f"{company}'s operating loss widened to {_amount(rng)} in {period}",
            f"{company}'s {cost} increased by {_pct(rng)}",
            f"{company} cut its outlook for {period}",
            f"{company} will lay off {rng.randint(20, 900)} employees",
            f"{company} suspended its dividend",
        ]
    else:
        options = [
            f"{company} will publish its results for {period} on {rng.randint(1, 28)} {rng.choice(MONTHS)}",
            f"{company} appointed {rng.choice(PEOPLE)} as {rng.choice(ROLES)}",
            f"{company}'s {metric} was {_amount(rng)} in {period}, unchanged from a year earlier",
            f"{company} operates {rng.randint(3, 80)} plants in {rng.randint(2, 30)} countries",
            f"{company}'s annual general meeting will be held in {rng.choice(MONTHS)}",
            f"{company} has {rng.randint(200, 40000)} employees",
        ]
    return rng.choice(options)


def _render(style: str, fact: str, label: str, rng: random.Random) -> str:
    """Dress a fact in an institution's register."""
    if style == "newswire":
        return rng.choice(["{f}, the company said.", "{f}.", "According to the company, {f}.",
                           "In a stock exchange release, {f}."]).format(f=fact)
    if style == "broker_note":
        view = {"positive": ["We reiterate Buy.", "Upside to our estimates.", "We raise our target price."],
                "negative": ["We move to Sell.", "Downside risk to consensus.", "We cut our target price."],
                "neutral": ["We keep our estimates.", "Our rating is unchanged.", "No change to our view."]}
        return f"{fact}. {rng.choice(view[label])}"
    if style == "retail_desk":
        company = next((c for c in COMPANIES if fact.startswith(c)), None)
        text = fact.replace(company, TICKERS[company], 1) if company else fact
        tail = {"positive": ["nice!", "looking strong", "bullish"], "negative": ["ouch", "not great", "bearish"],
                "neutral": ["fyi", "noted", "calendar update"]}
        return f"{text} - {rng.choice(tail[label])}"
    return rng.choice(["Credit view: {f}.", "{f}; spreads to react.", "Rating watch: {f}."]).format(f=fact)


def generate_news(num_rows: int, num_institutions: int, seed: int = 7,
                  label_noise: float = 0.03) -> pd.DataFrame:
    """Return ``num_rows`` synthetic sentences with ``text``, ``label`` and ``institution``.

    Rows are spread evenly over institutions; ``label_noise`` of them carry a
    random label, as real annotations disagree.
    """
    rng = random.Random(seed)
    rows = []
    for index in range(num_rows):
        site = index % num_institutions
        profile = INSTITUTIONS[site % len(INSTITUTIONS)]
        label = rng.choices(LABELS, weights=profile.label_mix)[0]
        text = _render(profile.style, _fact(label, rng), label, rng)
        if rng.random() < label_noise:
            label = rng.choice(LABELS)
        rows.append({"text": text, "label": label, "institution": f"institution-{site}",
                     "synthetic": True})
    return pd.DataFrame(rows)
