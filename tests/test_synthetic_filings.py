"""Synthetic financial QA data: SQuAD-style rows with exact spans, non-IID institutions."""

import hashlib
import re

import pandas as pd
import pytest

from finfed.data.synthetic_filings import ANSWER_TYPES, TOPICS, generate_filings_qa


def _answer(row) -> tuple[str, int]:
    assert len(row.answers["text"]) == len(row.answers["answer_start"]) == 1
    return row.answers["text"][0], row.answers["answer_start"][0]


def test_deterministic_seeded_and_marked_synthetic():
    first, second = generate_filings_qa(300, 3, seed=5), generate_filings_qa(300, 3, seed=5)
    pd.testing.assert_frame_equal(first, second)
    other = generate_filings_qa(300, 3, seed=6)
    assert len(set(first["context"]) & set(other["context"])) == 0
    assert first["synthetic"].all()


@pytest.mark.parametrize("num_sites", [1, 3, 5, 8])
def test_every_answer_is_the_first_occurrence_of_an_exact_span(num_sites):
    frame = generate_filings_qa(1200, num_sites, seed=num_sites)
    for row in frame.itertuples():
        text, start = _answer(row)
        assert row.context[start:start + len(text)] == text, row.id
        assert row.context.find(text) == start, row.id  # an earlier copy would make the gold span ambiguous


@pytest.mark.parametrize("size,num_sites", [(10, 1), (1000, 3), (803, 8), (9, 9)])
def test_every_institution_present_balanced_and_ids_unique(size, num_sites):
    frame = generate_filings_qa(size, num_sites)
    assert len(frame) == size and frame["id"].is_unique
    counts = frame["institution"].value_counts()
    assert sorted(counts.index) == sorted(f"institution-{i}" for i in range(num_sites))
    assert counts.max() - counts.min() <= 1


def test_a_site_keeps_its_data_when_sites_are_added():
    two, three = generate_filings_qa(200, 2, seed=4), generate_filings_qa(300, 3, seed=4)
    site0 = [frame[frame["institution"] == "institution-0"].drop(columns="id").reset_index(drop=True)
             for frame in (two, three)]
    pd.testing.assert_frame_equal(*site0)


@pytest.mark.parametrize("size,num_sites", [(5, 0), (2, 3)])
def test_impossible_requests_are_refused(size, num_sites):
    with pytest.raises(ValueError, match="num_sites"):
        generate_filings_qa(size, num_sites)


def test_all_topics_and_answer_types_and_shared_passages_appear():
    frame = generate_filings_qa(2000, 4, seed=11)
    assert set(frame["topic"]) == set(TOPICS)
    assert set(frame["answer_type"]) == set(ANSWER_TYPES)
    per_passage = frame.groupby("passage_id").size()
    assert (per_passage > 1).mean() > 0.3  # several questions on one passage, as in SQuAD
    assert frame.groupby("passage_id")["context"].nunique().eq(1).all()


def test_passage_lengths_mostly_short_some_long():
    passages = generate_filings_qa(2000, 5, seed=2).drop_duplicates("passage_id")
    words = passages["context"].str.split().str.len()
    assert 40 <= words.median() <= 110
    assert 0.05 <= (words > 150).mean() <= 0.2  # long enough to need several windows
    assert words.max() <= 250


def test_answers_are_short_spans_not_given_away_by_the_question():
    frame = generate_filings_qa(2000, 5, seed=3)
    for row in frame.itertuples():
        text, _ = _answer(row)
        assert 1 <= len(text.split()) <= 12, row.id
        assert text not in row.question, row.id


_MONTH = "(?:January|February|March|April|May|June|July|August|September|October|November|December)"
FORMATS = {  # every number format the registers use, written out independently of the generator
    "date": rf"\d{{1,2}} {_MONTH} \d{{4}}|{_MONTH} \d{{1,2}}, \d{{4}}|\d{{4}}-\d\d-\d\d|\d{{1,2}}\.\d{{1,2}}\.\d{{4}}",
    "amount": r"(?:(?:EUR|USD|SEK|GBP) ?|[€$£])[\d.,]+(?: ?(?:million|billion|m|bn|mn|per share))?"
              r"|[\d.,]+ (?:million )?(?:euros|US dollars|Swedish kronor|pounds sterling)(?: per share)?",
    "percentage": r"\d[\d.]* ?(?:%|percent|per cent|pct)",
}


def test_numeric_answers_are_well_formed_and_come_with_same_kind_distractors():
    frame = generate_filings_qa(3000, 5, seed=8)
    numeric = frame[frame["answer_type"].isin(list(FORMATS))]
    lonely = []
    for row in numeric.itertuples():
        text, start = _answer(row)
        assert re.fullmatch(FORMATS[row.answer_type], text), (row.id, text)
        rest = row.context[:start] + " | " + row.context[start + len(text):]
        if not re.search(FORMATS[row.answer_type], rest):
            lonely.append(row.id)
    # the model must read the question: another amount/date/percentage stands beside nearly every answer
    assert len(lonely) <= 0.01 * len(numeric), lonely[:5]


def _amount_shapes(rows: pd.DataFrame) -> set[str]:
    """The number formats of a site's amount answers: 'EUR 9 million', '9 million euros', '€9bn'."""
    texts = rows.loc[rows["answer_type"] == "amount", "answers"].map(lambda a: a["text"][0])
    return {re.sub(r"\d+", "9", re.sub(r"EUR|USD|SEK|GBP|[€$£]", "C", t)) for t in texts}


def test_institutions_differ_in_topic_mix_and_number_formats():
    frame = generate_filings_qa(3000, 5, seed=1)
    mix = frame.groupby("institution")["topic"].value_counts(normalize=True).unstack(fill_value=0)
    assert (mix.max() - mix.min()).max() > 0.3
    shapes = {site: _amount_shapes(rows) for site, rows in frame.groupby("institution")}
    sites = sorted(shapes)
    for index, a in enumerate(sites):
        for b in sites[index + 1:]:
            overlap = len(shapes[a] & shapes[b]) / len(shapes[a] | shapes[b])
            assert overlap < 0.5, (a, b, shapes[a] & shapes[b])


DEFAULT_DATA_SHA256 = "94ae9bb13c98c8b952ee5bdadd8dfd686945efe7e91171adcce9ca27600e5884"


def test_the_clauses_variant_adds_clause_answers_and_leaves_the_default_data_alone():
    from finfed.data.synthetic_filings import CLAUSE

    default = generate_filings_qa(600, 4, seed=7)
    rows = "\n".join(f"{r.question}|{r.context}|{r.answers['text'][0]}|{r.answers['answer_start'][0]}|{r.institution}"
                     for r in default.itertuples())
    # the default data as generated before the variant existed (commit a401c95): the variant changed none of it
    assert hashlib.sha256(rows.encode()).hexdigest() == DEFAULT_DATA_SHA256
    assert CLAUSE not in set(default["answer_type"])
    frame = generate_filings_qa(1200, 3, seed=9, variant="clauses")
    clauses = frame[frame["answer_type"] == CLAUSE]
    assert 0.15 < len(clauses) / len(frame) < 0.5
    assert set(clauses["topic"]) == set(TOPICS)
    for row in frame.itertuples():  # every answer, clauses too, is the first occurrence of an exact span
        text, start = _answer(row)
        assert row.context[start:start + len(text)] == text and row.context.find(text) == start, row.id
    assert clauses["answers"].map(lambda a: len(a["text"][0].split())).median() >= 6  # clause-length answers
    with pytest.raises(ValueError, match="unknown synthetic filings variant"):
        generate_filings_qa(30, 3, variant="essays")


def test_a_variant_the_task_has_not_is_refused_naming_the_key():
    from finfed.config import load_config
    from finfed.data.partition import load_federated_data
    from finfed.errors import ConfigError
    from finfed.tasks import task_class

    config = load_config(None, ["data.synthetic_variant=clauses", "data.synthetic_size=60"])  # classification
    with pytest.raises(ConfigError, match=r"`data.synthetic_variant` is 'clauses'.*no variants"):
        load_federated_data(config.data, 3, task_class(config).records)
    with pytest.raises(ConfigError, match=r"`data.synthetic_variant` \('clauses'\) shapes finfed's synthetic data"):
        load_config(None, ["task=qa", "data.synthetic_variant=clauses", "data.path=filings.jsonl"])
    qa = load_config(None, ["task=qa", "data.synthetic_variant=clauses", "data.synthetic_size=60"])
    data = load_federated_data(qa.data, 3, task_class(qa).records)
    assert data.source == "synthetic financial filings QA (seed 7, clauses)"
    assert "clause" in set(data.train_pool["answer_type"])  # the variant's rows reached the task's records
    words = data.train_pool["answer_texts"].map(lambda texts: len(texts[0].split()))
    assert words.max() >= 6
