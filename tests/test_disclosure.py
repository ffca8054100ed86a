"""What leaves a site: the allow-list, record-free error reasons, and canaries that must never reach the coordinator.

A canary is a string planted in one site's data (a label, a QA answer, an ordinary record, a folder name).
Each end-to-end test asserts it is absent from everything the coordinator received or wrote (the replies,
the run directory except the site-side ``sites/`` and ``ledgers/``, its console) and present in the
site's own log, so the test fails if the site's log stops receiving the details or if they leak.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import QA_CANARY
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import NODE_BASE, InProcessGrid, message_round, serve

from finfed import constants as keys
from finfed.config import load_config
from finfed.data.loading import check_labels, normalise_examples, read_table
from finfed.data.qa_records import normalise_qa_records
from finfed.data.synthetic_filings import generate_filings_qa
from finfed.data.synthetic_news import generate_news
from finfed.errors import (
    BudgetExhausted,
    ConfigError,
    DataError,
    FinfedError,
    PrivacyError,
    RunError,
    TrainingError,
)
from finfed.flower_app.client import app as client_app
from finfed.privacy.disclosure import (
    EVALUATE_METRICS,
    TRAIN_METRICS,
    OptIns,
    allow_list,
    disallowed_fields,
    error_reason,
    outgoing_metrics,
    reply_policy,
    shown_reason,
)
from finfed.runs.outputs import RUN_LEDGERS, read_metrics, read_privacy, read_status
from finfed.site.guard import checked_reply, disclosure_mod
from finfed.site.node_settings import share_label_shares, share_train_loss

CANARY = "ZQXCANARY7731"
LABELS = "data.labels=negative,neutral,positive"


# ---------------------------------------------------------------------------- error reasons

def _raised(function, *args):
    with pytest.raises(Exception) as caught:
        function(*args)
    return caught.value


def _frame(rows):
    import pandas as pd
    return pd.DataFrame(rows)


def test_each_finfed_error_kind_gets_its_category_and_a_record_free_reason():
    settings = load_config(None, []).data
    frame = normalise_examples(_frame([{"text": "fine", "label": "neutral"},
                                       {"text": "also fine", "label": CANARY}]), settings, "data file /x.csv")
    unknown = _raised(check_labels, frame, ["negative", "neutral", "positive"], "data file /x.csv")
    assert CANARY in str(unknown)  # the full message keeps the detail for the site's own log
    assert error_reason(unknown) == "data error: a label is not in the run's label list (row 2)"

    empty = _raised(normalise_examples, _frame([{"text": " ", "label": CANARY}]), settings, "f")
    assert error_reason(empty) == "data error: a text is empty (row 1)"

    for error, category in ((ConfigError(CANARY), "config error"), (DataError(CANARY), "data error"),
                            (PrivacyError(CANARY), "privacy refusal"), (BudgetExhausted(CANARY), "privacy refusal"),
                            (TrainingError(CANARY), "training error"), (RunError(CANARY), "internal error"),
                            (FinfedError(CANARY), "internal error")):
        reason = error_reason(error)
        assert reason.startswith(f"{category}: ") and CANARY not in reason, reason


def test_a_reason_declared_by_an_error_class_is_kept():
    from finfed.errors import LedgerIntegrityError

    error = LedgerIntegrityError(f"privacy ledger /banks/{CANARY}/ledger.json is unreadable")
    assert error_reason(error) == f"privacy refusal: {LedgerIntegrityError.public_reason}"
    assert CANARY not in error_reason(error)


def test_a_missing_data_file_reason_holds_no_path(tmp_path):
    missing = _raised(read_table, tmp_path / f"bank-{CANARY}" / "data.csv")
    assert CANARY in str(missing) and error_reason(missing) == "data error: the data file does not exist"


def test_a_qa_answer_at_a_wrong_offset_is_reported_by_row_only():
    settings = load_config(None, ["task=qa", "data.partitioner=iid"]).data
    rows = [{"id": "a", "question": "Q?", "context": "Revenue was EUR 5m.",
             "answers": {"text": ["EUR 5m"], "answer_start": [12]}},
            {"id": f"id-{CANARY}", "question": "Q?", "context": f"Revenue was {CANARY} in 2024.",
             "answers": {"text": [CANARY], "answer_start": [3]}}]
    error = _raised(normalise_qa_records, _frame(rows), settings, "data file /qa.jsonl")
    assert CANARY in str(error)
    assert error_reason(error) == "data error: 1 QA record(s) whose answer is not at its offset (first: row 2)"


@pytest.mark.parametrize("error", [ValueError(f"row 3 is {CANARY}"), KeyError(CANARY),
                                   FileNotFoundError(2, "No such file", f"/data/{CANARY}/x.csv"),
                                   RuntimeError(f"context: ...{CANARY}...")])
def test_any_other_exception_sends_its_type_name_only(error):
    reason = error_reason(error)
    assert reason == f"internal error: unexpected {type(error).__name__} (details in the site's log)"


def test_a_stop_is_interrupted_and_an_error_class_may_declare_its_category():
    class Stopped(FinfedError):
        category = "interrupted"
    assert error_reason(KeyboardInterrupt()).startswith("interrupted: ")
    assert error_reason(Stopped(CANARY)) == "interrupted: the site stopped the round on request"


def test_the_coordinator_keeps_only_reasons_in_finfeds_form():
    assert shown_reason(2, "data error: a text is empty (row 4)") == "data error: a text is empty (row 4)"
    raw = f"<class 'ValueError'>:<'row 1 has unknown label {CANARY}'>"  # what Flower itself would send
    assert CANARY not in shown_reason(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, raw)
    assert shown_reason(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable") == "Error: Node Unavailable"


# ---------------------------------------------------------------------------- the allow-list

def test_the_allow_list_rejects_an_unknown_metric_key_and_train_loss_without_opt_in():
    plain = reply_policy("train", None)
    metrics = dict.fromkeys(TRAIN_METRICS, 1.0)
    assert disallowed_fields({keys.METRICS: metrics}, plain) == []
    assert disallowed_fields({keys.METRICS: {**metrics, f"eval-{CANARY}": 1.0}}, plain) == [f"metrics.eval-{CANARY}"]
    assert disallowed_fields({keys.METRICS: {keys.TRAIN_LOSS: 0.3}}, plain) == ["metrics.train-loss"]
    with_loss = reply_policy("train", None, OptIns(train_loss=True))
    assert disallowed_fields({keys.METRICS: {keys.TRAIN_LOSS: 0.3}}, with_loss) == []
    assert with_loss.opted_in == ("train-loss",) and plain.opted_in == ()
    assert disallowed_fields({"notes": {}}, plain) == ["notes"]
    assert disallowed_fields({keys.ARRAYS: {"lora_B": 0, "extra": 0}}, plain, ["lora_B"]) == ["arrays.extra"]
    evaluate = reply_policy("evaluate", None, OptIns(train_loss=True))
    assert disallowed_fields({keys.METRICS: dict.fromkeys(EVALUATE_METRICS, 0.0)}, evaluate) == []
    assert disallowed_fields({keys.METRICS: {keys.EPSILON: 1.0}}, evaluate) == ["metrics.epsilon"]
    collect = reply_policy("train", "collect_masked_vectors")
    assert disallowed_fields({"fitres.metrics": {keys.TRAIN_LOSS: 0.1}}, collect) == ["fitres.metrics.train-loss"]
    assert disallowed_fields({"secaggplus_configs": {"pk1": b"", "pk2": b""}},
                             reply_policy("train", "setup")) == []
    assert outgoing_metrics({keys.TRAIN_LOSS: 0.2, keys.STEPS: 3}, OptIns()) == {keys.STEPS: 3}


def test_label_share_gaps_leave_a_site_only_with_its_opt_in():
    gap = f"{keys.EVAL_SHARE_GAP_PREFIX}1"
    metrics = {keys.EVAL_ACCURACY: 0.8, f"{keys.EVAL_RECALL_PREFIX}1": 0.7, gap: 0.12}
    without, shared = OptIns(train_loss=True), OptIns(label_shares=True)  # an opt-in for one thing is not for another
    assert disallowed_fields({keys.METRICS: metrics}, reply_policy("evaluate", None, without)) == [f"metrics.{gap}"]
    assert disallowed_fields({keys.METRICS: metrics}, reply_policy("evaluate", None, shared)) == []
    assert reply_policy("evaluate", None, shared).opted_in == ("label share gaps",)
    assert reply_policy("train", None, shared).opted_in == ()
    assert outgoing_metrics(metrics, without) == {keys.EVAL_ACCURACY: 0.8, f"{keys.EVAL_RECALL_PREFIX}1": 0.7}
    assert outgoing_metrics(metrics, OptIns(label_shares=True)) == metrics
    listing = allow_list(OptIns(label_shares=True))
    assert gap in listing["evaluate"][keys.METRICS] and gap not in allow_list()["evaluate"][keys.METRICS]
    config = load_config(None, [])
    assert share_label_shares(config, {keys.NODE_PARTITION_ID: 0})  # simulation: the run's setting (on)
    assert not share_label_shares(load_config(None, ["privacy.share_label_shares=false"]), {keys.NODE_PARTITION_ID: 0})
    assert not share_label_shares(config, {keys.NODE_SITE_ID: 3})  # deployed: off unless the site says so
    assert share_label_shares(config, {keys.NODE_SITE_ID: 3, keys.NODE_SHARE_LABEL_SHARES: "true"})
    # a SuperNode started by hand with its own data and a partition-id is deployed too: the run cannot opt it in
    by_hand = {keys.NODE_PARTITION_ID: 0, keys.NODE_DATA_PATH: "bank.csv"}
    assert not share_label_shares(config, by_hand) and not share_train_loss(config, by_hand)


def test_the_whole_allow_list_names_train_loss_only_with_the_opt_in():
    def with_loss(listing):
        return sorted(f"{kind}/{record}" for kind, records in listing.items()
                      for record, allowed in records.items() if keys.TRAIN_LOSS in allowed)
    assert with_loss(allow_list()) == []
    assert with_loss(allow_list(OptIns(train_loss=True))) == ["train/metrics",
                                                           "train/secagg+:collect_masked_vectors/fitres.metrics"]


def test_train_loss_is_the_sites_choice_never_the_coordinators():
    config = load_config(None, ["privacy.share_train_loss=true"])
    assert share_train_loss(config, {keys.NODE_PARTITION_ID: 0})  # simulation: the run's setting
    assert not share_train_loss(config, {keys.NODE_SITE_ID: 3})  # deployed: off unless the site says so
    assert share_train_loss(config, {keys.NODE_SITE_ID: 3, keys.NODE_SHARE_TRAIN_LOSS: True})
    assert not share_train_loss(load_config(None, ["privacy.share_train_loss=false"]), {keys.NODE_PARTITION_ID: 0})


def test_a_deployed_site_opts_in_to_sending_its_loss_in_its_own_site_toml(tmp_path):
    from deployment_harness import fill_site, make_consortium, site_data

    from finfed.deploy.site_config import load_site_config

    consortium = make_consortium(tmp_path)
    path = fill_site(consortium, consortium.sites[0], site_data(tmp_path, 3, rows_per_site=40)[0])
    node_config = load_site_config(path).node_config()
    assert node_config[keys.NODE_SHARE_TRAIN_LOSS] is False  # the template's defaults
    assert node_config[keys.NODE_SHARE_LABEL_SHARES] is False
    path.write_text(path.read_text().replace("share_train_loss = false", "share_train_loss = true")
                    .replace("share_label_shares = false", "share_label_shares = true"))
    node_config = load_site_config(path).node_config()
    assert node_config[keys.NODE_SHARE_TRAIN_LOSS] is True and share_train_loss(load_config(None, []), node_config)
    assert share_label_shares(load_config(None, []), node_config)


@pytest.fixture
def request_message(monkeypatch):
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    return Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7,
                   message_type="evaluate")


def test_a_reply_with_a_key_off_the_allow_list_is_not_sent(request_message, caplog):
    reply = Message(content=RecordDict({keys.METRICS: MetricRecord({f"eval-{CANARY}": 1.0})}),
                    reply_to=request_message)
    with caplog.at_level(logging.ERROR):
        checked = checked_reply(reply, request_message, None, OptIns(), [])
    assert checked.has_error() and CANARY not in checked.error.reason
    assert checked.error.reason.startswith("internal error: the reply held a field not on the site's allow-list")
    assert CANARY in caplog.text  # named in the site's log, for its own people


def test_the_guard_sends_a_record_free_reason_and_logs_everything_at_the_site(request_message, tmp_path, capfd):
    context = Context(run_id=1, node_id=7, node_config={keys.NODE_SITE_DIR: str(tmp_path / "site")},
                      state=RecordDict(), run_config={})

    def fails(message, context):
        logging.getLogger("finfed.training.local").info("step 1/4 loss 0.6931")
        raise ValueError(f"row 17 has unknown label {CANARY!r}")

    reply = disclosure_mod(request_message, context, fails)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == "internal error: unexpected ValueError (details in the site's log)"
    site_log = (tmp_path / "site" / "site.log").read_text()
    assert CANARY in site_log and "Traceback" in site_log and "step 1/4 loss" in site_log
    assert (tmp_path / "site" / "site.log").stat().st_mode & 0o777 == 0o600
    printed = capfd.readouterr()
    assert CANARY not in printed.out + printed.err and "step 1/4" not in printed.out + printed.err
    assert logging.getLogger("finfed").propagate  # restored after the message


# ---------------------------------------------------------------------------- canaries, end to end

def coordinator_side_files(run_dir: Path) -> list[Path]:
    """Every file of the run directory except the site-side ``sites/`` and ``ledgers/`` folders."""
    site_side = (run_dir / "sites", run_dir / RUN_LEDGERS)
    return [p for p in run_dir.rglob("*") if p.is_file() and not any(s in p.parents for s in site_side)]


def assert_no_canary_at_the_coordinator(run_dir: Path, grid: InProcessGrid, printed: str) -> None:
    files = coordinator_side_files(run_dir)
    assert {"status.json", "metrics.jsonl"} <= {p.name for p in files}
    assert any("checkpoint" in p.parts for p in files)
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), path
    for reply in grid.received:  # what crossed the wire
        assert CANARY not in (reply.error.reason if reply.has_error() else repr(reply.content)), reply
    assert CANARY not in printed  # in simulation a site's stdout/stderr reaches the coordinator's flower.log


def site_log(run_dir: Path, site: int) -> str:
    path = run_dir / "sites" / f"site-{site}" / "site.log"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _news_file(path: Path, seed: int, rows: int = 120):
    frame = generate_news(rows, 1, seed=seed)[["text", "label"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def _serve_sites(config, data_paths, before_send=None, share_loss: bool = True) -> InProcessGrid:
    """Sites with their own data files: deployed sites, whose opt-ins are theirs (here: train loss, unless not)."""
    nodes = [{keys.NODE_DATA_PATH: str(p), **({keys.NODE_SHARE_TRAIN_LOSS: True} if share_loss else {})}
             for p in data_paths]
    grid = InProcessGrid(client_app.app, config, nodes)
    if before_send is not None:
        grid.before_send = before_send
    serve(config, grid)
    return grid


def _failures(run_dir: Path) -> list[str]:
    return [line for record in read_metrics(run_dir) for line in record["failures"]]


SERVE = ("federation.min_sites=1", "privacy.membership_audit=false", LABELS)


@pytest.mark.slow
def test_canary_label_at_one_site_stays_at_that_site(tiny_config, tmp_path, capfd):
    config = tiny_config(*SERVE)
    good, bad = tmp_path / "bank-0" / "data.csv", tmp_path / "bank-1" / "data.csv"
    _news_file(good, seed=1)
    frame = _news_file(bad, seed=2)
    frame.loc[17, "label"] = CANARY
    frame.to_csv(bad, index=False)
    grid = _serve_sites(config, [good, bad])
    run_dir = config.resolved_run_dir
    assert read_status(run_dir)["state"] == "complete"
    failures = _failures(run_dir)
    assert len(failures) == 2 and all("data error: a label is not in the run's label list (row 18)" in f
                                      for f in failures), failures
    assert_no_canary_at_the_coordinator(run_dir, grid, "".join(capfd.readouterr()))
    assert CANARY in site_log(run_dir, 1) and CANARY not in site_log(run_dir, 0)
    # the sites opted in to sharing their loss, and the run says so as a disclosure outside epsilon
    assert read_privacy(run_dir)["non_private_statistics"][keys.TRAIN_LOSS]["sites"] == [0]
    assert "Disclosed outside ε" in (run_dir / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_canary_in_a_qa_answer_at_a_wrong_offset_stays_at_the_site(tiny_config, tmp_path, capfd):
    config = tiny_config(*SERVE[:2], "task=qa", "data.max_length=96", "qa.doc_stride=32",
                         "data.synthetic_size=300", "data.partitioner=iid")
    paths = []
    for site in (0, 1):
        records = generate_filings_qa(60, 1, seed=site + 3)[["id", "question", "context", "answers"]]
        if site == 1:
            records.at[5, "answers"] = {"text": [CANARY], "answer_start": [3]}
            records.at[5, "context"] = f"{records.at[5, 'context']} Auditor: {CANARY}."
        paths.append(tmp_path / f"bank-{site}" / "qa.jsonl")
        paths[-1].parent.mkdir()
        records.to_json(paths[-1], orient="records", lines=True)
    grid = _serve_sites(config, paths)
    run_dir = config.resolved_run_dir
    failures = _failures(run_dir)
    assert failures and all("data error: 1 QA record(s) whose answer is not at its offset (first: row 6)" in f
                            for f in failures), failures
    assert_no_canary_at_the_coordinator(run_dir, grid, "".join(capfd.readouterr()))
    assert CANARY in site_log(run_dir, 1)


@pytest.mark.slow
def test_canary_in_an_ordinary_training_record_and_train_loss_without_opt_in(tiny_config, tmp_path, capfd):
    """Site 0 trains on a record holding the canary; the sites did not opt in to sending their loss, though the
    run's settings ask for it: sites with their own data decide alone."""
    config = tiny_config(*SERVE, "privacy.share_train_loss=true")
    paths = [tmp_path / "bank-0" / "data.csv", tmp_path / "bank-1" / "data.csv"]
    frame = _news_file(paths[0], seed=1)
    frame["text"] = frame["text"] + f" Client {CANARY}."  # every record, so the training split holds it
    frame.to_csv(paths[0], index=False)
    _news_file(paths[1], seed=2)
    grid = _serve_sites(config, paths, share_loss=False)
    run_dir = config.resolved_run_dir
    assert read_status(run_dir)["state"] == "complete" and not _failures(run_dir)
    sites = [s for record in read_metrics(run_dir)[1:] for s in record["sites"]]
    assert len(sites) == 4 and all(keys.TRAIN_LOSS not in s and keys.EPSILON in s for s in sites)
    assert read_privacy(run_dir)["non_private_statistics"] == {}
    assert "Disclosed outside" not in (run_dir / "report.md").read_text(encoding="utf-8")
    assert_no_canary_at_the_coordinator(run_dir, grid, "".join(capfd.readouterr()))
    assert CANARY in paths[0].read_text() and "step" in site_log(run_dir, 0)  # trained on it, logged locally


@pytest.mark.slow
def test_a_data_file_that_disappears_mid_run_leaves_no_path_at_the_coordinator(tiny_config, tmp_path, capfd):
    import finfed.site.rounds

    config = tiny_config(*SERVE)
    paths = [tmp_path / "bank-0" / "data.csv", tmp_path / f"bank-{CANARY}" / "data.csv"]
    _news_file(paths[0], seed=1)
    _news_file(paths[1], seed=2)

    def remove_in_round_2(grid, message):
        if message_round(message) == 2 and message.metadata.dst_node_id == NODE_BASE + 1 and paths[1].exists():
            paths[1].unlink()
            finfed.site.rounds._site_context.cache_clear()  # a deployed ClientApp is a fresh process per message

    grid = _serve_sites(config, paths, remove_in_round_2)
    run_dir = config.resolved_run_dir
    assert read_status(run_dir)["state"] == "complete"
    failures = read_metrics(run_dir)[2]["failures"]
    assert len(failures) == 1 and "data error: the data file does not exist" in failures[0], failures
    assert_no_canary_at_the_coordinator(run_dir, grid, "".join(capfd.readouterr()))
    assert CANARY in site_log(run_dir, 1)


# ---------------------------------------------------------------------------- through Flower's simulation

@pytest.mark.slow  # a whole Flower simulation (Ray actors; their output goes to flower.log)
def test_in_flower_simulation_no_canary_reaches_flower_log(qa_canary_run):
    """The shared QA run (tests/conftest.py): site 0's rows hold a canary in an ordinary record's context and in
    an answer at a wrong offset, dropped (`data.bad_answers=drop`). Before, the dropped record was printed, answer
    and context, into flower.log; per-step losses too."""
    run_dir = qa_canary_run
    assert read_status(run_dir)["state"] == "complete"
    files = coordinator_side_files(run_dir)
    assert "flower.log" in {p.name for p in files}
    for file in files:
        assert QA_CANARY.encode() not in file.read_bytes(), file
    flower_log = (run_dir / "flower.log").read_text(encoding="utf-8")
    assert "dropped 1 QA record(s)" in flower_log  # counted, not quoted
    assert "step 1/" not in flower_log  # per-step losses stay at the site
    logs = "".join(site_log(run_dir, s) for s in (0, 1))
    assert QA_CANARY in logs and "step" in logs
    assert all(keys.TRAIN_LOSS in s for s in read_metrics(run_dir)[1]["sites"])  # simulation default: shared


def test_a_stopped_round_is_reported_as_interrupted_without_its_message():
    from finfed.errors import RunInterrupted

    reason = error_reason(RunInterrupted("site 3: CANARY-STOP round 2 abandoned"))
    assert reason.startswith("interrupted: ") and "CANARY-STOP" not in reason
