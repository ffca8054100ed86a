"""The HTML and PDF reports, opened as a reader would: in a real headless Chromium, and printed by it."""

import subprocess

import pytest
from PIL import Image
from report_runs import finished_run, page_text, plot_data
from test_report import RAW_MARKDOWN, kept_ledger

from finfed.cli.main import main
from finfed.reporting.pdf import chromium_flags, find_chromium

CHROMIUM = find_chromium()
MATPLOTLIB_BLUE = (31, 119, 180)  # first colour of matplotlib's default cycle: the plotted lines
BANK = "Harbor Savings Bank"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def rendered(page, tmp_path) -> str:
    """The page's DOM after Chromium parsed and laid it out."""
    done = subprocess.run([CHROMIUM, *chromium_flags(tmp_path / "profile"), "--dump-dom", page.resolve().as_uri()],
                          check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def plot_lines(dom: str, plot_id: str) -> list[dict]:
    return plot_data(dom, plot_id)["lines"]


def pdf_text(path) -> tuple[str, int]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    words = " ".join(page.extract_text() for page in reader.pages).split()  # table cells wrap when printed
    return " ".join(words), len(reader.pages)


def check_report_is_readable(text: str) -> None:
    assert not RAW_MARKDOWN.search(text), RAW_MARKDOWN.search(text)


def test_run_reports_render_and_print_with_their_verdict_budget_lines_and_named_sites(tmp_path):
    runs = {"within": finished_run(tmp_path / "a", name="within", names={"1": BANK}),
            "refused": finished_run(tmp_path / "b", name="refused", names={"1": BANK}, refused_from=3)}
    verdicts = {}
    for kind, run_dir in runs.items():
        assert main(["report", str(run_dir), "--pdf"]) == 0
        dom = rendered(run_dir / "report.html", tmp_path)
        text = page_text(dom)
        check_report_is_readable(text)
        card = text[text.index("Verdict"):text.index("Privacy per site")]
        assert "Every site within its privacy budgetyes" in card and f"Run{kind}" in card
        assert "finfed version" in card and "Configuration hash (SHA-256)" in card and "Headline metric" in card
        verdicts[kind] = card
        assert BANK in text and "site 0" in text
        lines = plot_lines(dom, "epsilon-plot")
        assert {"target", "budget"} <= {line["kind"] for line in lines}
        assert [line["sites"] for line in lines if line["kind"] == "budget"] == [["site 0", f"site 1 ({BANK})"]]

        printed, pages = pdf_text(run_dir / "report.pdf")
        assert pages >= 2 and "Verdict" in printed and BANK in printed and "within budget" in printed
        assert "`" not in printed and "**" not in printed and "|---|" not in printed
    assert "Refused a round for budgetnone" in verdicts["within"]
    assert f"Refused a round for budgetsite 0: round(s) 3; site 1 ({BANK}): round(s) 3" in verdicts["refused"]
    assert "PASS: Every site stayed within its privacy budget; no site refused a round." in verdicts["within"]
    assert "PASS, WITH ATTENTION" in verdicts["refused"]


def test_the_plots_are_on_screen(tmp_path):
    run_dir = finished_run(tmp_path)
    assert main(["report", str(run_dir)]) == 0
    screenshot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *chromium_flags(tmp_path / "profile"), "--window-size=1000,2400",
                    f"--screenshot={screenshot}", (run_dir / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = list(Image.open(screenshot).convert("RGB").getdata())
    blue = sum(1 for p in pixels if all(abs(a - b) < 25 for a, b in zip(p, MATPLOTLIB_BLUE)))
    assert blue > 200, "the plots' lines are not on screen"


def test_the_ledger_report_renders_and_prints_with_integrity_runs_and_budget_line(tmp_path):
    path = kept_ledger(tmp_path)
    pdf = tmp_path / "site-ledger.pdf"
    assert main(["report", "--ledger", str(path), "--pdf", "--out", str(pdf)]) == 0
    dom = rendered(pdf.with_suffix(".html"), tmp_path)
    text = page_text(dom)
    check_report_is_readable(text)
    assert "Ledger integrity checkpassed" in text and "run-a" in text and "run-b" in text
    assert [line["kind"] for line in plot_lines(dom, "ledger-plot")] == ["budget"]
    printed, _ = pdf_text(pdf)
    assert "integrity check" in printed and "passed" in printed and "run-b" in printed and "within budget" in printed


@pytest.mark.slow
def test_a_simulated_runs_report_and_its_sites_ledger_render_and_print(tiny_simulated_run, tmp_path):
    """Not built from records: a real `finfed simulate` (tiny model, Flower's engine), its report as printed
    by the run itself and by `finfed report --pdf`, and one of its sites' ledgers."""
    run_dir = tiny_simulated_run[0]
    assert main(["report", str(run_dir), "--pdf"]) == 0
    dom = rendered(run_dir / "report.html", tmp_path)
    text = page_text(dom)
    check_report_is_readable(text)
    card = text[text.index("Verdict"):text.index("Privacy per site")]
    assert "Every site within its privacy budgetyes" in card and "Headline metric" in card
    assert "site 0" in text and "site 1" in text
    assert {"target", "budget"} <= {line["kind"] for line in plot_lines(dom, "epsilon-plot")}
    # Per-site fairness: the global model on each site's validation split, per-label recall, the worst site,
    # with its plot, and said to be disclosed, non-private statistics.
    fairness = text[text.index("Per-site fairness"):text.index("Aggregation and rejected updates")]
    assert "worst-served site" in fairness and "(worst)" in fairness and "recall" in fairness
    assert "disclosed, non-private statistics" in fairness
    drawn = plot_data(dom, "fairness-plot")
    assert len(drawn["groups"]) == 2 and any(name.startswith("recall ") for name in drawn["series"])
    assert "No site update was rejected" in text
    printed, pages = pdf_text(run_dir / "report.pdf")
    assert pages >= 2 and "Verdict" in printed and "within budget" in printed and "`" not in printed
    assert "Per-site fairness" in printed

    ledger = sorted((run_dir / "ledgers").glob("*"))[0]
    page = tmp_path / "ledger.html"
    assert main(["report", "--ledger", str(ledger), "--format", "html", "--out", str(page)]) == 0
    ledger_text = page_text(rendered(page, tmp_path))
    check_report_is_readable(ledger_text)
    assert "Ledger integrity checkpassed" in ledger_text and "synthetic/site-0within budget" in ledger_text
    assert "Every run that spent from this dataset" in ledger_text
