"""The report model and its three renderings (JSON, Markdown, HTML), from run folders built from records."""

import json
import re

import pytest
from report_runs import finished_run, page_text, plot_data

from finfed.cli.main import main
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.ledger import PrivacyLedger, new_entry
from finfed.reporting.ledger_report import ledger_summary
from finfed.reporting.privacy_report import build_report, config_hash
from finfed.reporting.render import (
    render_html,
    render_ledger,
    render_markdown,
)

RAW_MARKDOWN = re.compile(r"`|\*\*|\|---|^#+ ", re.MULTILINE)  # the YAML appendix has "- " lists
DATASET = "loans.csv"


def test_a_run_within_budget_and_one_where_sites_refused_differ_in_the_verdict(tmp_path):
    within = build_report(finished_run(tmp_path / "a", name="within"))
    refused = build_report(finished_run(tmp_path / "b", name="refused", refused_from=3))
    assert within["verdict"]["status"] == "pass" and within["verdict"]["refused"] == []
    assert within["verdict"]["summary"] == "Every site stayed within its privacy budget; no site refused a round."
    assert refused["verdict"]["status"] == "attention"
    assert refused["verdict"]["refused"] == [{"site": "site 0", "rounds": [3]}, {"site": "site 1", "rounds": [3]}]
    assert "site 0 refused round(s) 3; site 1 refused round(s) 3" in refused["verdict"]["summary"]
    for report in (within, refused):
        assert report["verdict"]["within_budget"] is True
    within_text = page_text(render_html(within))
    refused_text = page_text(render_html(refused))
    assert "Refused a round for budgetnone" in within_text
    assert "Refused a round for budgetsite 0: round(s) 3; site 1: round(s) 3" in refused_text


def test_a_run_where_every_site_refused_round_1_says_so_and_claims_no_spend(tmp_path):
    report = build_report(finished_run(tmp_path, refused_from=1))
    assert report["verdict"]["refused"] == [{"site": "site 0", "rounds": [1]}, {"site": "site 1", "rounds": [1]}]
    markdown, text = render_markdown(report), page_text(render_html(report))
    for rendered in (markdown, text):
        assert "No round trained" in rendered and "Every site refused round 1 of 3" in rendered
        assert "spent no privacy budget" in rendered and "refused every round (budget)" in rendered
    assert "epsilon <= 0 (delta )" not in markdown and not RAW_MARKDOWN.search(text)


def test_a_site_over_its_lifetime_budget_fails_the_verdict(tmp_path):
    report = build_report(finished_run(tmp_path, budget=1.0))  # every site spent more than 1.0
    assert report["verdict"]["status"] == "fail" and report["verdict"]["within_budget"] is False
    assert report["verdict"]["over_budget"] == ["site 0", "site 1"]
    text = page_text(render_html(report))
    assert "OVER BUDGET" in text and "Every site within its privacy budgetno" in text


def test_the_verdict_card_comes_first_and_names_run_date_version_hash_data_and_the_headline(tmp_path):
    run_dir = finished_run(tmp_path, names={"1": "Harbor Savings Bank"})
    report = build_report(run_dir)
    page = render_html(report)
    text = page_text(page)
    order = [text.index(heading) for heading in ("Verdict", "Privacy per site", "Utility of the global model",
                                                 "What the guarantee means", "Empirical audit",
                                                 "Appendix: full configuration")]
    assert order == sorted(order)
    meta = report["meta"]
    assert meta["config_hash"] == config_hash(load_saved_config(run_dir)) and len(meta["config_hash"]) == 64
    for fact in ("Runreport-check", f"finfed version{meta['finfed_version']}",
                 f"Configuration hash (SHA-256){meta['config_hash']}", f"Date{meta['date']}",
                 "DataSynthetic: finfed's generated financial-news sentences",
                 "Headline metricaccuracy 0.7000 against 0.3800 for the majority class (above the baseline)"):
        assert fact in text[:text.index("Privacy per site")], fact
    assert "Harbor Savings Bank" in text and "site 0" in text  # named where a name exists


def test_loss_weights_are_stated_with_what_they_change_and_absent_when_unset(tmp_path):
    """A risk officer reads the per-label figures next to the weights that shaped them."""
    weighted = build_report(finished_run(tmp_path / "w", settings=("train.class_weights={negative: 3}",)))
    for page in (render_markdown(weighted), page_text(render_html(weighted))):
        assert ("Training-loss weights per label: negative 3 (other labels 1): fixed settings, not counted from "
                "the sites' data") in page
        assert "so the privacy guarantee is unchanged" in page
    plain = build_report(finished_run(tmp_path / "p"))
    assert plain["meta"]["loss_weights"] == ""
    assert "Training-loss weights" not in render_markdown(plain) + render_html(plain)


def test_the_html_report_has_no_raw_markdown_real_headers_alt_text_and_text_labels(tmp_path):
    page = render_html(build_report(finished_run(tmp_path)))
    text = page_text(page)
    assert not RAW_MARKDOWN.search(text), RAW_MARKDOWN.search(text)
    assert "<code>privacy.reproducible</code>" in page and "<strong>0.520</strong>" in page  # rendered, not leaked
    assert page.count('<th scope="col">') >= 20 and '<th scope="row">' in page
    for plot in re.findall(r"<img [^>]*>", page):
        assert re.search(r'alt="[^"]{40,}"', plot), plot
    assert text.count("within budget") >= 2  # each site's status in words, not only a colour
    assert "http" not in page.split("<body>")[1] and page.count("data:image/png;base64,") == 3


def test_the_epsilon_plot_draws_each_site_the_target_and_the_lifetime_budget(tmp_path):
    report = build_report(finished_run(tmp_path, names={"0": "Cedar Credit Union"}, budget=12.0))
    data = plot_data(render_html(report), "epsilon-plot")
    assert set(data["series"]) == {"site 0 (Cedar Credit Union)", "site 1"}  # the name beside the id
    assert data["series"]["site 1"] == {str(r): e for r, e in report["sites"]["1"]["epsilon_by_round"].items()}
    assert {(line["kind"], line["value"]) for line in data["lines"]} == {("target", 8.0), ("budget", 12.0)}
    assert [line["sites"] for line in data["lines"] if line["kind"] == "budget"] == [["site 0 (Cedar Credit Union)",
                                                                                     "site 1"]]
    markdown = render_markdown(report)
    assert "run target ε = 8; lifetime budget ε = 12 (site 0 (Cedar Credit Union), site 1)" in markdown


def test_every_epsilon_shown_carries_its_delta_and_accountant(tmp_path):
    report = build_report(finished_run(tmp_path))
    markdown = render_markdown(report)
    for site in report["sites"].values():
        assert f"| {site['epsilon']:.3f} | 8 | " in markdown
    assert "the PRV accountant at δ = 1e-05" in markdown and "| 1e-05 | 1.1000 |" in markdown
    worst = max(site["epsilon"] for site in report["sites"].values())
    assert f"epsilon <= {worst:.3f} (delta 1e-05)" in markdown


def test_the_end_of_run_report_and_finfed_report_are_the_same_generator(tmp_path):
    run_dir = finished_run(tmp_path)
    assert main(["report", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert (run_dir / "report.md").read_text() == render_markdown(report)
    assert report["verdict"]["status"] == "pass" and report["sites"]["0"]["cross_check"]["prv"] == pytest.approx(
        report["sites"]["0"]["epsilon"], rel=1e-6)
    assert "MISMATCH" not in (run_dir / "report.md").read_text()


def test_a_stated_epsilon_that_is_not_its_recomputation_fails_the_verdict(tmp_path):
    run_dir = finished_run(tmp_path)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    privacy["sites"]["1"]["epsilon"] *= 0.5
    (run_dir / "privacy.json").write_text(json.dumps(privacy))
    report = build_report(run_dir)
    assert report["verdict"]["status"] == "fail" and report["verdict"]["mismatched"] == ["site 1"]
    assert "MISMATCH (site 1)" in page_text(render_html(report)) and "**MISMATCH** (site 1)" in render_markdown(report)


def test_pdf_without_chromium_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert main(["report", str(finished_run(tmp_path)), "--pdf"]) == 2
    assert "install it (Debian/Ubuntu: `apt-get install chromium`)" in capsys.readouterr().err


def kept_ledger(folder, runs=(("run-a", 2), ("run-b", 1)), budget=20.0):
    """A site's ledger as its rounds leave it: each round with the lifetime epsilon after it."""
    ledger, accountant = PrivacyLedger(folder / "ledger.json", head_dir=folder), SiteAccountant("rdp")
    for run_id, rounds in runs:
        for server_round in range(1, rounds + 1):
            accountant.record(1.0, 0.05, 40)
            ledger.append(new_entry(run_id=run_id, server_round=server_round, fingerprint="f" * 64,
                                    accountant="rdp", noise_multiplier=1.0, sample_rate=0.05, steps=40,
                                    max_grad_norm=1.0, delta=1e-5, epsilon_after=accountant.epsilon(1e-5),
                                    dataset=DATASET, budget_epsilon=budget))
    return folder / "ledger.json"


def test_the_ledger_report_shows_every_run_its_spend_over_time_the_budget_and_integrity(tmp_path):
    summary = ledger_summary(kept_ledger(tmp_path))
    data = summary["datasets"][DATASET]
    assert [r["run_id"] for r in data["run_spend"]] == ["run-a", "run-b"]
    assert [r["rounds"] for r in data["run_spend"]] == [2, 1]
    epsilons = [h["epsilon"] for h in data["history"]]
    assert epsilons == sorted(epsilons) and epsilons[-1] == pytest.approx(data["epsilon"])
    assert data["run_spend"][-1]["epsilon_after"] == pytest.approx(data["epsilon"]) and data["within_budget"]

    page = render_ledger(summary, "html")
    text = page_text(page)
    assert "Ledger integrity checkpassed" in text and "within budget" in text and "WARNING" not in text
    assert "PASS: the ledger's integrity check passed and no dataset is over its lifetime budget." in text
    assert f"remaining {20 - data['epsilon']:.3f}" in text and "run-a" in text and "run-b" in text
    assert not RAW_MARKDOWN.search(text)
    plot = plot_data(page, "ledger-plot")
    assert plot["lines"] == [{"kind": "budget", "label": f"lifetime budget ε = 20 ({DATASET})", "value": 20.0,
                              "sites": [DATASET]}]
    assert list(plot["series"][DATASET].values()) == pytest.approx(epsilons)
    assert json.loads(render_ledger(summary, "json"))["datasets"][DATASET]["history"][0]["run_id"] == "run-a"
    markdown = render_ledger(summary)
    assert "| run-b | 1 | 40 |" in markdown and "Ledger integrity check: passed" in markdown
    assert f"{DATASET}: within budget: lifetime ε {data['epsilon']:.3f} of budget 20 (δ 1e-05, rdp)" in markdown


def test_the_ledger_reports_verdict_flags_stored_figures_that_differ(tmp_path):
    path = kept_ledger(tmp_path)
    PrivacyLedger(path, head_dir=tmp_path).append(new_entry(
        run_id="run-c", server_round=1, fingerprint="f" * 64, accountant="rdp", noise_multiplier=1.0,
        sample_rate=0.05, steps=40, max_grad_norm=1.0, delta=1e-5, epsilon_after=0.01, dataset=DATASET,
        budget_epsilon=20.0))
    summary = ledger_summary(path)
    for kind in ("md", "html"):
        rendered = render_ledger(summary, kind)
        assert "stored figures differ from their recomputation (WARNING below)" in rendered
        assert "WARNING: 1 stored figure(s) differ" in rendered


def test_finfed_report_ledger_writes_each_format(tmp_path, capsys):
    path = kept_ledger(tmp_path)
    for kind in ("md", "html", "json"):
        out = tmp_path / f"ledger-report.{kind}"
        assert main(["report", "--ledger", str(path), "--format", kind, "--out", str(out)]) == 0
        assert out.read_text() == render_ledger(ledger_summary(path), kind)
    assert main(["report", "--ledger", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 3)[-1])["integrity"]["passed"] is True


def load_saved_config(run_dir):
    from finfed.config import load_config

    return load_config(run_dir / "config.yaml")


def test_a_ledger_restarted_explicitly_renders_its_earlier_rounds_in_every_format(tmp_path):
    path = kept_ledger(tmp_path)
    PrivacyLedger(path, head_dir=tmp_path).start_new(DATASET, "records replaced by a new cohort")
    summary = ledger_summary(path)
    assert summary["datasets"][DATASET]["rounds"] == 0
    for kind in ("md", "html"):
        rendered = render_ledger(summary, kind)
        assert "(records replaced by a new cohort): the 3 round(s) before it" in rendered and "no DP rounds" in rendered
    assert json.loads(render_ledger(summary, "json"))["datasets"][DATASET]["new_ledgers"][0]["rounds_before"] == 3


def test_the_fairness_section_names_the_worst_site_and_the_largest_gaps_as_disclosed_statistics(tmp_path):
    report = build_report(finished_run(tmp_path))
    fairness = report["fairness"]
    assert fairness["round"] == 3 and fairness["metric"] == "accuracy"
    assert fairness["worst_site"] == {"name": "site 1", "value": 0.5}
    assert fairness["gap"] == pytest.approx(0.2)
    assert fairness["largest_recall_gap"]["label"] == "positive"
    assert fairness["largest_recall_gap"]["gap"] == pytest.approx(0.4)
    assert fairness["sites"][1]["recall"] == {"negative": 0.75, "neutral": 0.55, "positive": 0.2}
    pooled = fairness["label_share_gaps"]  # weighted by the sites' 60 and 40 validation records
    assert pooled["sites"] == 2 and pooled["records"] == 100 and pooled["largest"] == "neutral"
    assert pooled["gaps"] == pytest.approx({"negative": -0.07, "neutral": 0.16, "positive": -0.09})
    assert "predicts `neutral` for 16.0 points more of them than are `neutral`" in fairness["summary"]
    by_round = fairness["label_share_gaps_by_round"]  # every round the sites shared them, not only the last
    assert [entry["round"] for entry in by_round] == [1, 2, 3] and by_round[-1]["gaps"] == pooled["gaps"]
    assert by_round[0]["gaps"]["neutral"] == pytest.approx(0.32)
    assert "The largest gap of any label was 32.0 points after round 1 and 16.0 after round 3." in fairness["summary"]
    markdown, html = render_markdown(report), render_html(report)
    assert "| round | negative | neutral | positive | sites (records) |" in markdown
    assert "| 1 | -14.0 | +32.0 | -18.0 | 2 (100) |" in markdown and "| 3 | -7.0 | +16.0 | -9.0 | 2 (100) |" in markdown
    assert "## Per-site fairness" in markdown and "disclosed, non-private statistics" in markdown
    assert "| site 1 | 40 | 0.5000 | 0.4500 | 1.1000 | negative 0.7500, neutral 0.5500, positive 0.2000 |" in markdown
    text = page_text(html)
    assert "Per-site fairness" in text and "site 1 (worst)" in text and "disclosed, non-private statistics" in text
    assert 'id="label-share-table"' in html and "+16.0" in text and "+32.0" in text
    drawn = plot_data(html, "fairness-plot")
    assert drawn["groups"] == ["site 0", "site 1"]
    assert drawn["series"]["accuracy"] == {"site 0": 0.7, "site 1": 0.5}
    assert drawn["series"]["recall positive"] == {"site 0": 0.6, "site 1": 0.2}
    assert 'id="fairness-plot" src="data:image/png;base64,' in html
    assert json.loads(json.dumps(report, default=float))["rejections"]["count"] == 0
    assert "Aggregation: FedAvg" in markdown and "No site update was rejected" in markdown


def test_with_many_labels_the_label_share_table_shows_each_rounds_largest_gap_and_the_last_round_per_label(tmp_path):
    from finfed.reporting.fairness import MAX_LABEL_COLUMNS, fairness_section

    labels = [f"intent-{i}" for i in range(MAX_LABEL_COLUMNS + 2)]
    def evaluation(scale):
        gaps = {f"eval-share-gap-{i}": scale * (0.01 * i - 0.04) for i in range(len(labels))}
        return [{"site": 0, "num-examples": 50, "eval-accuracy": 0.6, **gaps}]
    rounds = [{"round": r, "evaluation": evaluation(scale)} for r, scale in ((1, 2.0), (2, 1.0))]
    report = build_report(finished_run(tmp_path))
    report["fairness"] = fairness_section(rounds, labels, lambda site: f"site {site}")
    assert report["fairness"]["label_share_columns"] == []
    markdown, html = render_markdown(report), render_html(report)
    assert "| round | largest gap (label) | sites (records) |" in markdown
    assert "| 1 | +10.0 (intent-9) | 1 (50) |" in markdown and "| 2 | +5.0 (intent-9) | 1 (50) |" in markdown
    assert "| intent-0 | -4.0 |" in markdown and "| intent-0 | -8.0 |" not in markdown  # per label: the last round
    assert 'id="label-share-last-table"' in html and "+10.0 (intent-9)" in page_text(html)


def test_label_share_gaps_pool_only_the_sites_that_shared_them():
    from finfed.reporting.fairness import pooled_share_gaps

    shared = {"site": 0, "num-examples": 30, "eval-accuracy": 0.6, "eval-share-gap-0": 0.2, "eval-share-gap-1": -0.2}
    withheld = {"site": 1, "num-examples": 70, "eval-accuracy": 0.9}  # did not opt in: not counted as a zero gap
    pooled = pooled_share_gaps([shared, withheld], ["negative", "neutral"])
    assert pooled == {"sites": 1, "records": 30, "gaps": {"negative": 0.2, "neutral": -0.2}, "largest": "negative"}
    assert pooled_share_gaps([withheld], ["negative", "neutral"]) is None


def test_a_sites_label_share_gaps_are_its_predicted_minus_true_shares(tiny_config):
    from finfed import constants as keys
    from finfed.models.adapters import exchanged_state
    from finfed.site.rounds import evaluate_round, site_context
    from finfed.tasks.classification_metrics import share_gap_per_label

    assert share_gap_per_label([0, 0, 1, 2], [1, 1, 1, 2], 4) == {0: -0.5, 1: 0.5, 2: 0.0, 3: 0.0}
    assert share_gap_per_label([], [], 3) == {}
    site = site_context(tiny_config("data.synthetic_size=80"), {keys.NODE_PARTITION_ID: 0})
    model = site.task.build_model()
    metrics = evaluate_round(site, {name: t.numpy() for name, t in exchanged_state(model).items()})
    predicted = site.task.probabilities(model, site.validation_examples).argmax(dim=-1).tolist()
    truth = [item["label"] for item in site.validation_examples]
    for index in range(len(site.task.labels)):  # every label, present at the site or not
        expected = (predicted.count(index) - truth.count(index)) / len(truth)
        assert metrics[f"{keys.EVAL_SHARE_GAP_PREFIX}{index}"] == pytest.approx(expected)
