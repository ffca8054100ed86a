"""Shared fixtures: a tiny random BERT built from a config, so unit tests stay fast."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path


def _one_share_of_the_cores_per_worker() -> None:
    """Under pytest-xdist (`-n 2`), each worker and every process it starts (simulations, Ray actors, sites)
    uses its share of the cores for torch's OpenMP threads. Left at torch's default (all cores each), two
    workers' spinning threads fight over the same cores: two copies of the membership-audit DP test side by
    side took 230 s each instead of 47 s (2-core machine). Set before torch is imported; an explicit
    OMP_NUM_THREADS wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_one_share_of_the_cores_per_worker()

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: E402

from finfed.config import load_config  # noqa: E402
from finfed.data.synthetic_news import generate_news  # noqa: E402

#: session fixtures that each make one real `finfed simulate` run, read by several tests (below)
SHARED_RUNS = ("tiny_simulated_run", "qa_canary_run", "median_run_with_a_failing_site")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, README "Test"), the tests reading one shared simulated run
    go to one worker (a group per run), so each run is made once, not once per worker. First among the hooks:
    xdist's worker reads the group marks in its own hook. (pytest 9.2 ignores the worker's renamed test ids, so
    loadgroup groups nothing there: pytest-xdist issue 1386; pyproject.toml's `dev` extra keeps pytest below 9.2.)"""
    for item in items:
        shared = [name for name in SHARED_RUNS if name in getattr(item, "fixturenames", ())]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_longest_first)


def _longest_first(item) -> int:
    """xdist hands out tests in the order the workers collected them. The longest (deployments, then the other
    `slow` runs) go first, so the run does not end with one worker on a three-minute deployment while the other
    idles: the short tests fill in at the end. Stable sort: the collection order holds within each tier."""
    if item.get_closest_marker("deployment") and item.get_closest_marker("slow"):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


@contextlib.contextmanager
def finfed_logging_restored():
    """The ServerApp configures the `finfed` logger for its process (finfed/runtime/app_log.py); a test (or a
    fixture) that runs it in-process must not hand that configuration on (caplog would see no record)."""
    logger = logging.getLogger("finfed")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    try:
        yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def _finfed_logging_restored():
    with finfed_logging_restored():
        yield


def _write_tiny_bert(folder: Path) -> Path:
    words = set()
    for text in generate_news(600, 4, seed=1)["text"]:
        words.update(re.findall(r"[a-z]+|\d|[^\sa-z\d]", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    return str(_write_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def tiny_overrides(backbone: str, run_dir: Path) -> list[str]:
    return [f"model.backbone={backbone}", f"run_dir={run_dir}", "data.synthetic_size=400",
            "federation.num_sites=2", "federation.rounds=2", "train.batch_size=16", "lora.r=4",
            "train.learning_rate=0.01"]


@pytest.fixture
def tiny_config(tiny_backbone, tmp_path):
    """A fast experiment: tiny BERT, small synthetic data, 2 sites, 2 rounds."""
    def make(*overrides: str):
        return load_config(None, [*tiny_overrides(tiny_backbone, tmp_path / "run"), *overrides])
    return make


@pytest.fixture
def tiny_simulate(tiny_backbone, tmp_path):
    """Run `finfed simulate` on the tiny federation (run dir: tmp_path/run); returns the exit code."""
    from finfed.cli.main import main

    def run(*overrides: str) -> int:
        settings = [*tiny_overrides(tiny_backbone, tmp_path / "run"), *overrides]
        return main(["simulate", *[arg for item in settings for arg in ("--set", item)]])
    return run


def simulate_once(folder: Path, settings: list[str], audit_log: Path | None = None) -> None:
    """`finfed simulate` with these settings; its console (stderr) is kept in ``folder/console.err``, its sites'
    outbound audit log in ``audit_log`` if given."""
    from finfed.cli.main import main

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()) as console:
        if audit_log is not None:
            patch.setenv("FINFED_AUDIT_LOG", str(audit_log))
        code = main(["simulate", *[arg for item in settings for arg in ("--set", item)]])
    (folder / "console.err").write_text(console.getvalue())  # the progress lines, for tests that read them
    assert code == 0, f"a shared simulation failed:\n{console.getvalue()[-4000:]}"


# Shared runs (issue 14): one real `finfed simulate` (Flower's engine, about 25 s on the 2-core machine) read by
# every test that only reads its outputs, instead of one run per test. Each run's tests form one xdist group.

@pytest.fixture(scope="session")
def tiny_simulated_run(tiny_backbone, tmp_path_factory):
    """The tiny federation as it is. Its sites' outbound audit log is kept. Returns (run_dir, audit_log, config)."""
    folder = tmp_path_factory.mktemp("shared-run")
    run_dir, audit = folder / "run", folder / "audit.jsonl"
    settings = tiny_overrides(tiny_backbone, run_dir)
    simulate_once(folder, settings, audit)
    return run_dir, audit, load_config(None, settings)


QA_CANARY = "QQCANARY5521"


@pytest.fixture(scope="session")
def qa_canary_run(tiny_backbone, tmp_path_factory) -> Path:
    """Extractive QA from one shared file (simulation reads one file; 2 institutions, 300 records): site 0's rows
    hold ``QA_CANARY`` in an ordinary record's context and in an answer at a wrong offset, which
    `data.bad_answers=drop` drops. Read by tests/test_disclosure.py and tests/test_qa_simulation.py."""
    from finfed.data.synthetic_filings import generate_filings_qa

    folder = tmp_path_factory.mktemp("qa-canary-run")
    frame = generate_filings_qa(300, 2, seed=7)
    first = frame.index[frame["institution"] == "institution-0"]
    frame.at[first[0], "answers"] = {"text": [QA_CANARY], "answer_start": [2]}
    frame.at[first[1], "context"] = f"{frame.at[first[1], 'context']} Signed {QA_CANARY}."
    path = folder / "filings.jsonl"
    frame.to_json(path, orient="records", lines=True)
    simulate_once(folder, [*tiny_overrides(tiny_backbone, folder / "run"), "task=qa", "data.max_length=96",
                           "qa.doc_stride=32", "data.source=file", f"data.path={path}", "data.bad_answers=drop"])
    return folder / "run"


@pytest.fixture(scope="session")
def median_run_with_a_failing_site(tiny_backbone, tmp_path_factory) -> tuple[Path, Path]:
    """Three sites under `federation.aggregation: median`; site 2's ledger is unreadable, so it refuses every round
    with an error, and `min_sites=2` lets the run complete. Read by tests/test_faults.py and
    tests/test_update_validation.py. Returns (run_dir, ledgers folder)."""
    folder = tmp_path_factory.mktemp("median-failing-run")
    ledgers = folder / "ledgers"
    ledgers.mkdir()
    (ledgers / "site-2.json").write_text("{not json")
    simulate_once(folder, [*tiny_overrides(tiny_backbone, folder / "run"), "federation.num_sites=3",
                           "federation.min_sites=2", f"privacy.ledger_dir={ledgers}", "federation.aggregation=median",
                           "privacy.membership_audit=false"])
    return folder / "run", ledgers
