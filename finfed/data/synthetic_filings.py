"""finfed's own synthetic financial question-answering data (the embedded default for QA).

SQuAD-style: short financial passages (results, guidance, rating actions, dividends,
buybacks, acquisitions), each asked one to three questions whose answers are exact
spans of the passage. Deterministic for a given (size, num_sites, seed). Each
institution writes in its own register (press release, analyst note, ratings
bulletin, regulatory filing, newswire), with its own topic mix and its own number,
date and percentage formats, so the federation is non-IID. Every passage holds
several amounts, dates or names, so a model has to read the question to pick the
right one. Every row says it is synthetic.

The ``clauses`` variant writes every passage with one more sentence whose answer is a clause (what drove
growth, what the outlook assumes, what a company is, what a buyback is for; it may take a passage one past
``MAX_SENTENCES``) and asks for that clause in half the passages, as the text questions of annual reports do
(TAT-QA's median answer is ten words): a public source for models that must answer such questions too. It
draws from its own random stream, so its passages are other passages, not the default ones with a clause
added; the default data do not change with it.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from finfed.data.synthetic_news import (
    COMPANIES,
    CURRENCIES,
    MONTHS,
    PEOPLE,
    PERIODS,
    TICKERS,
)

TOPICS = ("results", "guidance", "rating", "dividend", "buyback", "acquisition")
ANSWER_TYPES = ("amount", "date", "name", "percentage", "rating")  # "rating": a grade ("BBB+") or an outlook
VARIANTS = ("clauses",)  # besides the default: see the module's docstring
CLAUSE = "clause"  # the answer type the `clauses` variant adds

PERSONS = PEOPLE + ["Henrik Dahl", "Elena Rossi", "Tomas Kral", "Claire Dubois", "Mikko Salo",
                    "Grace Okafor", "David Moreau", "Ingrid Holm", "Rafael Ortiz", "Nina Petrova"]
AGENCIES = {  # agency -> its long-term and short-term scales, best first
    "Northbridge Ratings": "sp", "Sterling Credit Research": "moodys",
    "Apex Rating Services": "sp", "Halden Investors Service": "moodys",
}
SCALES = {  # single letters ("A", "B") are left out: they occur inside every other word
    "sp": (("AA", "AA-", "A+", "A-", "BBB+", "BBB", "BBB-", "BB+", "BB", "BB-", "B+"), ("A-1", "A-2", "A-3")),
    "moodys": (("Aa2", "Aa3", "A1", "A2", "A3", "Baa1", "Baa2", "Baa3", "Ba1", "Ba2", "Ba3", "B1"),
               ("P-1", "P-2", "P-3")),
}
BANKS = ["Hollis & Grant", "Nordvik Securities", "Carver Bank", "Lindqvist Partners", "Ashford Capital Markets"]
CITIES = ["Helsinki", "Stockholm", "London", "Frankfurt", "Oslo", "New York"]
CURRENCY_WORDS = {"EUR": "euros", "USD": "US dollars", "SEK": "Swedish kronor", "GBP": "pounds sterling"}
CURRENCY_SIGNS = {"EUR": "€", "USD": "$", "GBP": "£", "SEK": "SEK "}
LONG_FRACTION = 0.10  # share of passages with a second, background paragraph (exercises windowing)
MAX_SENTENCES = 6  # in a short passage, framing included
OPTIONAL_SHARE = 0.7  # chance that each optional fact (and its distractor figures) is in the passage
MAX_REDRAWS = 30  # tries at a passage whose answers are all first occurrences of their text


@dataclass(frozen=True)
class Register:
    """One synthetic site: a writing style, a topic mix and its own formats."""

    style: str
    topic_mix: tuple[float, ...]  # weights over TOPICS
    money: str  # code_word | code_short | code_decimal | words_full | symbol_short (see _Draw.money)
    dates: str  # dmy | mdy | iso | dotted
    percent: str  # "%" | " %" | " per cent" | " percent" | " pct"


REGISTERS = [
    Register("press_release", (0.30, 0.15, 0.05, 0.25, 0.15, 0.10), "code_word", "dmy", "%"),
    Register("analyst_note", (0.35, 0.35, 0.10, 0.10, 0.05, 0.05), "code_short", "mdy", "%"),
    Register("ratings_bulletin", (0.10, 0.10, 0.55, 0.05, 0.05, 0.15), "code_decimal", "iso", " percent"),
    Register("regulatory_filing", (0.15, 0.05, 0.05, 0.30, 0.25, 0.20), "words_full", "dotted", " per cent"),
    Register("newswire", (0.25, 0.15, 0.20, 0.10, 0.05, 0.25), "symbol_short", "dmy", " pct"),
]


def site_register(site: int) -> Register:
    """The register of site ``site``; beyond the five styles the topic mix is rotated so sites still differ."""
    base = REGISTERS[site % len(REGISTERS)]
    turn = (site // len(REGISTERS)) % len(TOPICS)
    mix = base.topic_mix[turn:] + base.topic_mix[:turn]
    return Register(base.style, mix, base.money, base.dates, base.percent)


@dataclass(frozen=True)
class Ask:
    """A question about one value of a passage, in several phrasings."""

    answer: str  # key of the value that answers it
    answer_type: str
    phrasings: tuple[str, ...]


class _Draw:
    """Random values for one passage, written in the register's formats."""

    def __init__(self, rng: random.Random, register: Register):
        self.rng, self.register = rng, register
        self.currency = rng.choice(CURRENCIES)
        self.people = rng.sample(PERSONS, 3)  # distinct roles never share a name
        self.companies = rng.sample(COMPANIES, 2)
        self.year = rng.randint(2023, 2026)
        self.day = date(self.year, rng.randint(1, 12), rng.randint(1, 28))

    def money(self, millions: float) -> str:
        style, cur = self.register.money, self.currency
        small = f"{millions:.1f}" if millions < 100 else f"{millions:,.0f}"
        if style == "code_word":
            return f"{cur} {millions / 1000:.2f} billion" if millions >= 1000 else f"{cur} {small} million"
        if style == "code_short":
            return f"{cur} {millions / 1000:.2f}bn" if millions >= 1000 else f"{cur} {small}m"
        if style == "code_decimal":  # ratings-agency house style: "USD1,204.5 million"
            return f"{cur}{millions:,.1f} million"
        if style == "words_full":
            return f"{small} million {CURRENCY_WORDS[cur]}"
        sign = CURRENCY_SIGNS[cur]
        return f"{sign}{millions / 1000:.2f}bn" if millions >= 1000 else f"{sign}{small}mn"

    def price(self, value: float, suffix: str = "") -> str:
        """A per-share figure (dividend, target price)."""
        if self.register.money == "words_full":
            return f"{value:.2f} {CURRENCY_WORDS[self.currency]}{suffix}"
        if self.register.money == "symbol_short":
            return f"{CURRENCY_SIGNS[self.currency]}{value:.2f}{suffix}"
        if self.register.money == "code_decimal":
            return f"{self.currency}{value:.2f}{suffix}"
        return f"{self.currency} {value:.2f}{suffix}"

    def pct(self, value: float) -> str:
        return f"{value:.1f}{self.register.percent}"

    def date(self, offset_days: int = 0) -> str:
        when = self.day + timedelta(days=offset_days)
        style = self.register.dates
        if style == "mdy":
            return f"{MONTHS[when.month - 1]} {when.day}, {when.year}"
        if style == "iso":
            return when.isoformat()
        if style == "dotted":
            return f"{when.day}.{when.month}.{when.year}"
        return f"{when.day} {MONTHS[when.month - 1]} {when.year}"

    def common(self) -> dict[str, str]:
        """Values every passage may mention: the company, its people, the register's framing."""
        rng, (company, other) = self.rng, self.companies
        reco = rng.choice(["Buy", "Hold", "Sell"])
        return {"company": company, "company_s": _possessive(company), "ticker": TICKERS[company].lstrip("$"),
                "other": other, "other_s": _possessive(other),
                "ceo": self.people[0], "cfo": self.people[1], "analyst": self.people[2],
                # the same people named outside the topic's sentences: separate keys, so that a question about
                # who *commented* is only asked where the comment is in the passage
                "bg_ceo": self.people[0], "bg_cfo": self.people[1], "contact": self.people[1],
                "year": str(self.year), "period": _period(rng.choice(PERIODS), self.year), "city": rng.choice(CITIES),
                "CITY": rng.choice(CITIES).upper(), "pub_date": self.date(-rng.randint(1, 9)),
                "reco": reco, "target_price": self.price(rng.uniform(4, 120)),
                "employees": f"{rng.randint(800, 60000):,}", "countries": str(rng.randint(3, 45)),
                "bg_amount": self.money(rng.uniform(200, 20000)), "bg_pct": self.pct(rng.uniform(20, 60)),
                "bg_year": str(self.year - 1)}


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _period(period: str, year: int) -> str:
    """'the first quarter of 2025', 'the full year 2025', 'January-September 2025'."""
    if period.startswith("the") and period != "the full year":
        return f"{period} of {year}"
    return f"{period} {year}"


# ---------------------------------------------------------------- values per topic


def _results_values(d: _Draw) -> dict[str, str]:
    rng = d.rng
    revenue = rng.uniform(150, 9000)
    operating = revenue * rng.uniform(0.04, 0.22)
    return {"revenue": d.money(revenue), "op_profit": d.money(operating),
            "net_profit": d.money(operating * rng.uniform(0.45, 0.8)), "growth": d.pct(rng.uniform(0.5, 18)),
            "margin": d.pct(100 * operating / revenue), "next_date": d.date(rng.randint(60, 100)),
            "agm_date": d.date(rng.randint(20, 55))}


def _guidance_values(d: _Draw) -> dict[str, str]:
    rng = d.rng
    old = rng.uniform(80, 4000)
    raised = rng.random() < 0.5
    new = old * (rng.uniform(1.04, 1.2) if raised else rng.uniform(0.8, 0.96))
    return {"new_guide": d.money(new), "old_guide": d.money(old), "growth_guide": d.pct(rng.uniform(1, 12)),
            "prev_growth": d.pct(rng.uniform(1, 12)), "report_date": d.date(rng.randint(130, 200)),
            "capex": d.money(old * rng.uniform(0.2, 0.6)), "cmd_date": d.date(rng.randint(20, 120)),
            "moved": "raised" if raised else "lowered",
            "reason": rng.choice(["stronger order intake", "weaker demand in Europe", "higher input costs",
                                  "a better product mix", "currency headwinds"])}


def _rating_values(d: _Draw) -> dict[str, str]:
    rng = d.rng
    agency = rng.choice(sorted(AGENCIES))
    long_scale, short_scale = SCALES[AGENCIES[agency]]
    start = rng.randrange(1, len(long_scale) - 1)
    up = rng.random() < 0.5
    new = start - 1 if up else start + 1
    return {"agency": agency, "from_rating": long_scale[start], "to_rating": long_scale[new],
            "st_rating": rng.choice(short_scale), "outlook": rng.choice(["stable", "positive", "negative"]),
            "action_date": d.date(), "ffo": d.pct(rng.uniform(8, 45)), "net_debt": d.money(rng.uniform(300, 15000)),
            "ffo_trigger": d.pct(rng.uniform(8, 45)), "liquidity": d.money(rng.uniform(100, 3000)),
            "review_date": d.date(rng.randint(150, 200)),
            "moved": "upgraded" if up else "downgraded", "move": "upgrade" if up else "downgrade"}


def _dividend_values(d: _Draw) -> dict[str, str]:
    rng = d.rng
    per_share = rng.uniform(0.1, 4.5)
    previous = per_share * rng.choice([rng.uniform(0.7, 0.97), rng.uniform(1.03, 1.2)])
    record = rng.randint(3, 20)
    return {"dps": d.price(per_share, " per share"), "prev_dps": d.price(previous, " per share"),
            "payout": d.pct(rng.uniform(25, 90)), "div_yield": d.pct(rng.uniform(1, 9)),
            "total": d.money(rng.uniform(20, 2500)),
            "agm_date": d.date(), "ex_date": d.date(record - 1), "record_date": d.date(record),
            "pay_date": d.date(record + rng.randint(5, 20))}


def _buyback_values(d: _Draw) -> dict[str, str]:
    rng = d.rng
    length = rng.randint(60, 330)
    return {"size": d.money(rng.uniform(20, 3000)), "returned": d.money(rng.uniform(20, 3000)),
            "max_pct": d.pct(rng.uniform(1, 10)), "treasury_pct": d.pct(rng.uniform(0.2, 4)),
            "start_date": d.date(), "end_date": d.date(length),
            "broker": rng.choice(BANKS)}


def _acquisition_values(d: _Draw) -> dict[str, str]:
    rng = d.rng
    price = rng.uniform(80, 12000)
    return {"price": d.money(price),
            "target_revenue": d.money(price * rng.uniform(0.2, 0.9)), "premium": d.pct(rng.uniform(8, 55)),
            "premium_3m": d.pct(rng.uniform(8, 55)), "equity": d.money(price * rng.uniform(0.5, 0.9)),
            "ref_date": d.date(-rng.randint(1, 5)), "close_date": d.date(rng.randint(90, 270)),
            "advisor": rng.choice(BANKS)}


VALUES = {"results": _results_values, "guidance": _guidance_values, "rating": _rating_values,
          "dividend": _dividend_values, "buyback": _buyback_values, "acquisition": _acquisition_values}

# ---------------------------------------------------------------- sentences per topic
# Each entry: (always included?, variants). Variants reorder the facts so that position does not give
# the answer away ("to X from Y" and "from Y to X").

SENTENCES = {
    "results": [
        (True, ("{company} reported revenue of {revenue} for {period}, up {growth} from a year earlier.",
                "{company_s} net sales rose {growth} to {revenue} in {period}.",
                "In {period}, revenue at {company} increased by {growth} to {revenue}.")),
        (True, ("Operating profit came in at {op_profit}, an operating margin of {margin}.",
                "The operating margin reached {margin}, with operating profit of {op_profit}.",
                "Operating profit was {op_profit} and the operating margin {margin}.")),
        (False, ("Net profit for the period amounted to {net_profit}.",
                 "Profit after tax was {net_profit}.")),
        (False, ('"We kept our costs under control in a demanding market," said chief executive {ceo}.',
                 "Chief executive officer {ceo} said the company had kept costs under control.")),
        (False, (("The next interim report will be published on {next_date}, after the annual general meeting "
                 "on {agm_date}."),
                 ("{company} will hold its annual general meeting on {agm_date} and publish its next interim "
                 "report on {next_date}."))),
    ],
    "guidance": [
        (True, (("{company} {moved} its outlook for {year} and now expects adjusted EBITDA of {new_guide}, "
                "compared with {old_guide} previously."),
                ("{company} {moved} its {year} guidance: adjusted EBITDA is now seen at {new_guide}, against "
                "an earlier forecast of {old_guide}."),
                ("Having previously guided for adjusted EBITDA of {old_guide}, {company} now expects {new_guide} "
                "for {year}."))),
        (True, ("Organic sales growth is forecast at around {growth_guide}, after {prev_growth} last year.",
                "After organic growth of {prev_growth} last year, the company expects about {growth_guide}.")),
        (False, ("Capital expenditure is expected to total {capex}.",
                 "Capital spending is planned at {capex} for the year.")),
        (False, ('"The change reflects {reason}," said chief financial officer {cfo}.',
                 "Chief financial officer {cfo} attributed the revision to {reason}.")),
        (False, (("Further details will be given at the capital markets day on {cmd_date}; the full-year report "
                 "follows on {report_date}."),
                 ("{company} will hold a capital markets day on {cmd_date} and report full-year figures on "
                 "{report_date}."))),
    ],
    "rating": [
        (True, (("{agency} {moved} {company_s} long-term issuer rating to {to_rating} from {from_rating} "
                "on {action_date}."),
                "On {action_date}, {agency} {moved} {company_s} long-term rating from {from_rating} to {to_rating}.",
                ("{company_s} long-term issuer rating was {moved} by {agency} from {from_rating} to {to_rating} "
                "on {action_date}."))),
        (True, ("The outlook is {outlook} and the next scheduled review is on {review_date}.",
                "The outlook on the rating is {outlook}; {agency} will next review it on {review_date}.")),
        (False, ("The short-term rating is {st_rating}.", "{agency} assigned a short-term rating of {st_rating}.")),
        (False, (("The agency expects funds from operations to net debt of about {ffo}, against a downgrade "
                 "trigger of {ffo_trigger}, with net debt of {net_debt} and liquidity of {liquidity}."),
                 ("Net debt stood at {net_debt} and liquidity at {liquidity}; funds from operations to net debt is "
                 "forecast near {ffo}, above the {ffo_trigger} the rating requires."))),
        (False, ("{analyst}, lead analyst at {agency}, said the {move} reflects the group's leverage.",
                 "The lead analyst on the rating is {analyst}.")),
    ],
    "dividend": [
        (True, (("The Board of Directors of {company} proposes a dividend of {dps} for {year}, compared with "
                "{prev_dps} a year earlier."),
                "{company} will pay a dividend of {dps} for {year}, after {prev_dps} for the previous year.",
                "Up from {prev_dps} a year earlier, the dividend proposed by {company} for {year} is {dps}.")),
        (True, (("Shares trade ex-dividend on {ex_date}, the record date is {record_date} and the dividend will "
                "be paid on {pay_date}."),
                ("The dividend will be paid on {pay_date} to shareholders registered on the record date, "
                "{record_date}."),
                "The record date is {record_date}; payment follows on {pay_date}.")),
        (False, (("This represents a payout ratio of {payout}, a dividend yield of {div_yield} and a total "
                 "distribution of {total}."),
                 "In total {total} will be distributed, a payout ratio of {payout} and a yield of {div_yield}.")),
        (False, ("The proposal is subject to approval by the annual general meeting on {agm_date}.",
                 "Shareholders will vote on the proposal at the annual general meeting on {agm_date}.")),
    ],
    "buyback": [
        (True, ("{company} will repurchase its own shares for up to {size} under a new buyback programme.",
                "{company} launched a share buyback programme of up to {size}.")),
        (True, (("The programme runs from {start_date} until {end_date} and covers at most {max_pct} of the "
                "outstanding shares."),
                ("Repurchases of at most {max_pct} of the share capital will start on {start_date} and end "
                "no later than {end_date}."))),
        (False, ("{broker} will carry out the repurchases independently of the company.",
                 "The company has mandated {broker} to execute the programme.")),
        (True, (("Under its previous programme {company} returned {returned} to shareholders and it now holds "
                "{treasury_pct} of its shares in treasury."),
                ("Earlier buybacks returned {returned} to shareholders; {treasury_pct} of the shares are held in "
                "treasury."))),
        (False, ('"Our balance sheet allows us to return excess capital," said chief financial officer {cfo}.',)),
    ],
    "acquisition": [
        (True, (("{company} has agreed to acquire {other} for an enterprise value of {price}, or {equity} for "
                "the shares."),
                ("{company} will buy {other} in a deal valuing the company at {price} including debt and its "
                "equity at {equity}."),
                ("{other} is to be acquired by {company} for an enterprise value of {price} (equity value "
                "{equity})."))),
        (True, (("The offer represents a premium of {premium} to {other_s} closing share price on {ref_date} and "
                "of {premium_3m} to its three-month average."),
                ("The price is {premium} above {other_s} closing price on {ref_date} and {premium_3m} above its "
                "three-month average."))),
        (False, ("{other} had revenue of {target_revenue} last year.",
                 "Last year {other} generated revenue of {target_revenue}.")),
        (True, ("The transaction is expected to close on {close_date}, subject to regulatory approval.",
                 "Completion is expected on {close_date}.")),
        (False, ("{advisor} is acting as financial adviser to {company}.",
                 "{company} is advised by {advisor}.")),
    ],
}

BACKGROUND = [  # the second paragraph of a long passage: more figures, more distractors
    "{company} employs about {employees} people in {countries} countries and its shares are listed in {city}.",
    "In {bg_year}, the group's total assets were {bg_amount} and its equity ratio stood at {bg_pct}.",
    ("Chief executive officer {bg_ceo} and chief financial officer {bg_cfo} will present the figures to investors "
    "and analysts in a webcast, and a recording will be available on the company's website afterwards."),
    ("This release contains forward-looking statements that reflect management's current views with respect "
    "to future events and financial performance; actual results may differ materially because of changes in "
    "market conditions, exchange rates, regulation and other factors outside the company's control."),
    ("The company does not undertake to update these statements except as required by law or by the rules "
    "of the stock exchange."),
]

FRAMES = {  # per register: (opening variants, closing variants); "" means none
    "press_release": (("", "{company} (ticker: {ticker}) announced the following on {pub_date}."),
                      ("", "For further information, please contact {contact}, chief financial officer.")),
    "analyst_note": (("Our take:", "Company update, {pub_date}."),
                     ("We reiterate our {reco} rating with a target price of {target_price}.",
                      "Our {reco} recommendation and our target price of {target_price} are unchanged.")),
    "ratings_bulletin": (("Credit update, {pub_date}.", ""),
                         ("", "Key rating drivers are leverage, liquidity and market position.")),
    "regulatory_filing": (("Stock exchange release, {pub_date}: inside information.", ""),
                          (("This is information that {company} is obliged to make public under the EU Market "
                           "Abuse Regulation."), "")),
    "newswire": (("{CITY}, {pub_date} (FinWire) -", ""), ("", "Shares in {company} were little changed.")),
}

ASKS = {
    "results": (
        Ask("revenue", "amount", ("What revenue did {company} report for {period}?",
                                  "How large were {company_s} sales in {period}?",
                                  "What was the revenue figure?")),
        Ask("op_profit", "amount", ("What was {company_s} operating profit?",
                                    "How much operating profit did {company} make in {period}?")),
        Ask("net_profit", "amount", ("What net profit did {company} report?",
                                     "How much did {company} earn after tax?")),
        Ask("growth", "percentage", ("By how much did {company_s} revenue grow?",
                                     "What was the year-on-year revenue growth?")),
        Ask("margin", "percentage", ("What operating margin did {company} achieve?", "What was the operating margin?")),
        Ask("ceo", "name", ("Who is {company_s} chief executive?", "Which executive commented on the results?")),
        Ask("agm_date", "date", ("When is {company_s} annual general meeting?",)),
        Ask("next_date", "date", ("When will {company} publish its next interim report?",
                                  "On what date is the next report due?")),
    ),
    "guidance": (
        Ask("new_guide", "amount", ("What adjusted EBITDA does {company} now expect for {year}?",
                                    "What is the new EBITDA forecast?")),
        Ask("old_guide", "amount", ("What was {company_s} previous EBITDA guidance?",
                                    "What EBITDA had {company} expected before the revision?")),
        Ask("growth_guide", "percentage", ("What organic growth does {company} forecast?",
                                           "How much organic sales growth is expected?")),
        Ask("capex", "amount", ("How much does {company} plan to spend on capital expenditure?",
                                "What is the capex plan?")),
        Ask("cfo", "name", ("Who is {company_s} chief financial officer?", "Who explained the change in guidance?")),
        Ask("prev_growth", "percentage", ("What organic growth did {company} achieve last year?",)),
        Ask("report_date", "date", ("When will {company} report its full-year figures?",)),
        Ask("cmd_date", "date", ("When is {company_s} capital markets day?",
                                 "On which date will {company} hold its capital markets day?")),
    ),
    "rating": (
        Ask("to_rating", "rating", ("What is {company_s} new long-term rating?",
                                    "To what level did {agency} move {company_s} rating?")),
        Ask("from_rating", "rating", ("What was {company_s} rating before the {move}?",
                                      "From which rating was {company} {moved}?")),
        Ask("agency", "name", ("Which agency {moved} {company}?", "Who changed {company_s} credit rating?")),
        Ask("outlook", "rating", ("What outlook did {agency} assign?", "What is the outlook on the rating?")),
        Ask("st_rating", "rating", ("What is {company_s} short-term rating?",)),
        Ask("action_date", "date", ("When did {agency} {move} {company}?", "On what date was the rating changed?")),
        Ask("ffo", "percentage", ("What funds from operations to net debt ratio does the agency expect?",)),
        Ask("ffo_trigger", "percentage", ("Below what funds from operations to net debt would the rating fall?",)),
        Ask("liquidity", "amount", ("How much liquidity does {company} have?",)),
        Ask("review_date", "date", ("When is the next scheduled review of the rating?",)),
        Ask("net_debt", "amount", ("How much net debt does {company} carry?",)),
        Ask("analyst", "name", ("Who is the lead analyst on {company_s} rating?",)),
    ),
    "dividend": (
        Ask("dps", "amount", ("How much dividend per share will {company} pay for {year}?",
                              "What dividend is proposed for {year}?")),
        Ask("prev_dps", "amount", ("What was {company_s} dividend a year earlier?",
                                   "How much did {company} pay per share for the previous year?")),
        Ask("record_date", "date", ("What is the record date for {company_s} dividend?",
                                    "When is the dividend record date?")),
        Ask("pay_date", "date", ("When will the dividend be paid?", "On what date does {company} pay the dividend?")),
        Ask("ex_date", "date", ("When do {company} shares go ex-dividend?",)),
        Ask("payout", "percentage", ("What payout ratio does the dividend represent?",)),
        Ask("div_yield", "percentage", ("What is the dividend yield?",)),
        Ask("total", "amount", ("How much will {company} distribute in total?",)),
        Ask("agm_date", "date", ("When is {company_s} annual general meeting?",)),
    ),
    "buyback": (
        Ask("size", "amount", ("How large is {company_s} new buyback programme?",
                               "For how much will {company} repurchase shares?")),
        Ask("max_pct", "percentage", ("What share of its capital may {company} buy back?",)),
        Ask("treasury_pct", "percentage", ("What share of its stock does {company} already hold in treasury?",)),
        Ask("start_date", "date", ("When does the buyback start?", "On what date do the repurchases begin?")),
        Ask("end_date", "date", ("When does the buyback programme end?",)),
        Ask("broker", "name", ("Which bank will execute the repurchases?",)),
        Ask("cfo", "name", ("Who commented on the buyback?", "Who is {company_s} chief financial officer?")),
        Ask("returned", "amount", ("How much did the previous programme return to shareholders?",)),
    ),
    "acquisition": (
        Ask("other", "name", ("Which company is {company} buying?", "What is the target of the acquisition?")),
        Ask("company", "name", ("Who is acquiring {other}?", "Which company agreed to buy {other}?")),
        Ask("price", "amount", ("What is the enterprise value of the deal?",
                                "What enterprise value does the deal put on {other}?")),
        Ask("premium", "percentage", ("What premium does the offer represent to the last closing price?",)),
        Ask("premium_3m", "percentage", ("What premium does the price carry to the three-month average?",)),
        Ask("equity", "amount", ("What is the equity value of the offer?", "What do {other_s} shares fetch in total?")),
        Ask("target_revenue", "amount", ("What was {other_s} revenue last year?",)),
        Ask("close_date", "date", ("When is the transaction expected to close?",)),
        Ask("advisor", "name", ("Who is advising {company}?",)),
    ),
}
FRAME_ASKS = (Ask("target_price", "amount", ("What is the analyst's target price for {company}?",)),)

# ---------------------------------------------------------------- the `clauses` variant
# Per topic: (the clause's key, its two halves drawn apart, the sentences stating it, the questions asking it).
_WHERE = ("in its Nordic retail business", "in North America", "across the services division",
          "among public-sector customers", "in the industrial segment", "in emerging markets")
CLAUSES = {
    "results": ("driver", (("higher volumes", "price increases", "strong demand for maintenance contracts",
                            "the consolidation of acquired businesses", "a recovery in project deliveries"), _WHERE),
                ("The increase was driven by {driver}.", "Growth came mainly from {driver}."),
                ("What drove {company_s} revenue growth?", "What was the increase in revenue driven by?")),
    "guidance": ("assumption", (("stable demand", "no further increase in energy prices",
                                 "steady order intake", "unchanged exchange rates", "a gradual easing of supply "
                                 "constraints"), _WHERE),
                 ("The outlook assumes {assumption}.", "The forecast is based on the assumption of {assumption}."),
                 ("What does {company_s} outlook assume?", "What is the forecast based on?")),
    "rating": ("rationale", (("its view of the group's leverage after the sale of its packaging unit",  # either way
                              "the expected path of cash flow from operations", "the breadth of the revenue base",
                              "the cost of refinancing the group's bonds", "the outlook for operating margins"),
                             ("over the next two years", "in a slowing economy", "despite higher investment",
                              "as interest rates stay high", "following the merger")),
                  ("The {move} reflects {rationale}.", "According to {agency}, the action reflects {rationale}."),
                  ("What does the rating {move} reflect?", "Why did {agency} change the rating?")),
    "dividend": ("policy", (("to distribute at least half of net profit", "to raise the dividend every year",
                             "to pay out between 40 and 60 percent of earnings", "to keep the dividend stable"),
                            ("over the business cycle", "while keeping an investment-grade rating",
                             "as long as leverage allows", "in two equal instalments")),
                 ("The company's dividend policy is {policy}.", "Under its dividend policy the aim is {policy}."),
                 ("What is {company_s} dividend policy?", "What does the dividend policy aim for?")),
    "buyback": ("purpose", (("to reduce the share capital", "to meet obligations under its share incentive plans",
                             "to return excess capital to shareholders", "to offset dilution from employee options"),
                            ("and cancel the repurchased shares", "over the coming year",
                             "without raising net debt", "in line with its capital allocation framework")),
                ("The purpose of the programme is {purpose}.", "The shares are bought back {purpose}."),
                ("What is the purpose of the buyback programme?", "Why is {company} buying back shares?")),
    "acquisition": ("description", (("a provider of payment software", "a maker of industrial sensors",
                                     "a distributor of medical supplies", "an operator of logistics terminals",
                                     "a developer of wind power projects"),
                                    ("for small and medium-sized retailers", "with customers across Europe",
                                     "in the Baltic region", "serving hospitals and clinics",
                                     "founded in 2009")),
                    ("{other} is {description}.", "Founded as a start-up, {other} is today {description}."),
                    ("What is {other}?", "What kind of company is {other}?")),
}


def _clause(topic: str, rng: random.Random) -> tuple[dict[str, str], str, Ask]:
    """The topic's clause value, the sentence that states it and the question that asks for it."""
    key, (first, second), sentences, questions = CLAUSES[topic]
    return ({key: f"{rng.choice(first)} {rng.choice(second)}"}, rng.choice(sentences),
            Ask(key, CLAUSE, questions))

# ---------------------------------------------------------------- rendering


def _fill(template: str, values: dict[str, str], offsets: dict[str, int], at: int) -> str:
    """``template`` with its fields filled; records where each field's value first appears (``at`` = start)."""
    out: list[str] = []
    length = at
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        length += len(literal)
        if field is not None:
            offsets.setdefault(field, length)
            out.append(values[field])
            length += len(values[field])
    return "".join(out)


def _render(paragraphs: list[list[str]], values: dict[str, str]) -> tuple[str, dict[str, int]]:
    """Sentences joined by spaces, paragraphs by a blank line; offsets of every value used."""
    offsets: dict[str, int] = {}
    parts: list[str] = []
    at = 0
    for index, sentences in enumerate(paragraphs):
        for number, template in enumerate(sentences):
            separator = ("\n\n" if index else "") if number == 0 else " "
            parts.append(separator)
            at += len(separator)
            text = _fill(template, values, offsets, at)
            parts.append(text)
            at += len(text)
    return "".join(parts), offsets


def _sentences(topic: str, register: Register, rng: random.Random, clause: str = "") -> list[str]:
    """The passage's own sentences: required facts, some optional ones, the register's framing; 6 at most, and
    ``clause`` (the `clauses` variant's sentence) after the first fact, which it explains."""
    opening, closing = FRAMES[register.style]
    first, last = rng.choice(opening), rng.choice(closing)
    room = MAX_SENTENCES - bool(last) - bool(first and not first.endswith("-"))
    keep = [required or rng.random() < OPTIONAL_SHARE for required, _ in SENTENCES[topic]]
    optional = [index for index, (required, _) in enumerate(SENTENCES[topic]) if keep[index] and not required]
    for index in optional[max(0, room - (sum(keep) - len(optional))):]:
        keep[index] = False  # over the limit: drop the last optional facts
    chosen = [rng.choice(variants) for (_, variants), kept in zip(SENTENCES[topic], keep) if kept]
    if clause:
        chosen.insert(1, clause)
    if first and first.endswith("-"):  # a newswire dateline runs into the first sentence
        chosen[0] = f"{first} {chosen[0]}"
    elif first:
        chosen.insert(0, first)
    return chosen + ([last] if last else [])


def _passage(topic: str, register: Register, rng: random.Random,
             clause: tuple[dict[str, str], str, Ask] | None = None) -> tuple[str, dict[str, str], dict[str, int]]:
    draw = _Draw(rng, register)
    values = draw.common() | VALUES[topic](draw) | (clause[0] if clause else {})
    paragraphs = [_sentences(topic, register, rng, clause[1] if clause else "")]
    if rng.random() < LONG_FRACTION:  # background first or last, so answers also sit deep in a long context
        paragraphs.insert(rng.randrange(2), list(BACKGROUND))
    context, offsets = _render(paragraphs, values)
    return context, values, offsets


def _questions(topic: str, context: str, values: dict[str, str], offsets: dict[str, int],
               count: int, rng: random.Random, strict: bool = True,
               clause: Ask | None = None) -> list[tuple[str, str, int, str]] | None:
    """Up to ``count`` (question, answer, start, answer type); with ``clause`` (the `clauses` variant), its
    question is one of them in half the passages.

    ``strict``: None when an answer's text occurs earlier in the context than where it answers;
    otherwise such an answer keeps its exact (later) offset.
    """
    asks = [ask for ask in ASKS[topic] + FRAME_ASKS if ask.answer in offsets]
    picked = rng.sample(asks, min(count, len(asks)))
    if clause and rng.random() < 0.5:  # anywhere among the passage's questions, not always first
        picked = picked[:count - 1]
        picked.insert(rng.randrange(len(picked) + 1), clause)
    out = []
    for ask in picked:
        text, start = values[ask.answer], context.find(values[ask.answer])
        # A name may come first inside another field (its possessive, "Orion Logistics'"); any other earlier
        # occurrence ("BBB" inside "BBB+", a date used twice) would teach a wrong span: redraw the passage.
        same_name = {offsets[key] for key in offsets if values[key].startswith(text)}
        if start != offsets[ask.answer] and not (ask.answer_type == "name" and start in same_name):
            if strict:
                return None
            start = offsets[ask.answer]
        out.append((rng.choice(ask.phrasings).format(**values), text, start, ask.answer_type))
    return out


def _site_rows(site: int, quota: int, seed: int, variant: str = "") -> list[dict]:
    """``quota`` questions for one site, from its own random stream (independent of the other sites)."""
    rng = random.Random(f"finfed-filings:{seed}:{site}" + (f":{variant}" if variant else ""))
    register = site_register(site)
    rows: list[dict] = []
    passage_number = 0
    while len(rows) < quota:
        topic = rng.choices(TOPICS, weights=register.topic_mix)[0]
        count = min(quota - len(rows), rng.choice([1, 2, 2, 3]))
        for attempt in range(MAX_REDRAWS):
            clause = _clause(topic, rng) if variant == "clauses" else None
            context, values, offsets = _passage(topic, register, rng, clause)
            qas = _questions(topic, context, values, offsets, count, rng, strict=attempt < MAX_REDRAWS - 1,
                             clause=clause[2] if clause else None)
            if qas is not None:
                break
        for question, text, start, answer_type in qas:
            rows.append({"question": question, "context": context,
                         "answers": {"text": [text], "answer_start": [start]}, "institution": f"institution-{site}",
                         "topic": topic, "answer_type": answer_type, "passage_id": f"site{site}-p{passage_number:05d}",
                         "synthetic": True})
        passage_number += 1
    return rows


def generate_filings_qa(size: int, num_sites: int, seed: int = 7, variant: str = "") -> pd.DataFrame:
    """Return ``size`` synthetic SQuAD-style questions over ``num_sites`` institutions (``variant``: "" or one
    of ``VARIANTS``).

    Columns: ``id``, ``question``, ``context``, ``answers`` (``{"text": [..], "answer_start": [..]}``,
    one answer), ``institution`` (``institution-<i>``, the same scheme as the news generator),
    ``topic``, ``answer_type``, ``passage_id`` (questions on one passage share it: split by it to keep
    a passage out of both train and test) and ``synthetic``. Questions are spread evenly over sites.
    """
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    if size < num_sites:
        raise ValueError(f"size must be at least num_sites ({num_sites}) so every site has a question, got {size}")
    if variant and variant not in VARIANTS:
        raise ValueError(f"unknown synthetic filings variant {variant!r}; known: {', '.join(VARIANTS)}")
    rows = []
    for site in range(num_sites):
        rows += _site_rows(site, size // num_sites + (site < size % num_sites), seed, variant)
    frame = pd.DataFrame(rows)
    frame.insert(0, "id", [f"syn-{index:06d}" for index in range(len(frame))])
    return frame
