"""Site names (issue 11): each site sends its name beside its id, and every output shows both.

Simulation: a site's name is its partition column's value; deployment: `[site] name` of its site.toml.
The flow through real rounds is in tests/test_audit.py (in-process, plain and SecAgg+) and
tests/test_simulation.py (Flower's simulation engine); here: the wire, the allow-list, the deployment
configuration and the reports, without training.
"""

import json

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from report_runs import finished_run, page_text

from finfed import constants as keys
from finfed.cli.main import main
from finfed.data.partition import site_names
from finfed.errors import ConfigError
from finfed.privacy.disclosure import disallowed_fields, reply_policy
from finfed.reporting.privacy_report import build_report
from finfed.reporting.render import render_markdown
from finfed.wire import clean_site_name, evaluate_reply, reply_metrics, site_record

NAMES = {"0": "Alder Bank", "1": "Harbor Savings Bank"}
LABELS = ["site 0 (Alder Bank)", "site 1 (Harbor Savings Bank)"]


@pytest.fixture
def request_message(monkeypatch):
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    return Message(RecordDict({keys.CONFIG: ConfigRecord({})}), dst_node_id=7, message_type="evaluate")


@pytest.mark.parametrize("given, shown", [
    ("Harbor Savings Bank", "Harbor Savings Bank"),
    ("  two   spaces ", "two spaces"),
    ("/srv/bank-a/data.csv", "-srv-bank-a-data.csv"),  # never a path
    ("C:\\data\\bank", "C:-data-bank"),
    ("bank\nINFO forged line", "bank-INFO forged line"),  # no line break into a log or a report
    ("x" * 200, "x" * 64),
    (17, ""), (None, ""), ("", ""),
])
def test_a_name_is_short_text_free_of_paths_and_control_characters(given, shown):
    assert clean_site_name(given) == shown


def test_a_reply_carries_the_name_in_its_own_record_and_the_coordinator_reads_it_cleaned(request_message):
    reply = evaluate_reply(request_message, {keys.SITE_ID: 1, keys.EVAL_ACCURACY: 0.5}, "Harbor Savings Bank")
    assert dict(reply.content[keys.SITE_RECORD]) == {keys.SITE_NAME: "Harbor Savings Bank"}
    assert reply_metrics(reply) == {keys.SITE_ID: 1, keys.EVAL_ACCURACY: 0.5, keys.SITE_NAME: "Harbor Savings Bank"}
    assert keys.SITE_RECORD not in evaluate_reply(request_message, {keys.SITE_ID: 1}, "").content  # no name: no record
    forged = Message(RecordDict({keys.METRICS: MetricRecord({keys.SITE_ID: 1}),
                                 keys.SITE_RECORD: ConfigRecord({keys.SITE_NAME: "../../etc"})}),
                     reply_to=request_message)
    assert reply_metrics(forged)[keys.SITE_NAME] == "..-..-etc"  # a foreign site's name is cleaned on arrival too


def test_the_allow_list_names_the_site_record_and_nothing_else_in_it():
    for kind in ("train", "evaluate"):
        policy = reply_policy(kind, None)
        assert disallowed_fields(site_record("Alder Bank"), policy) == []
        extra = {keys.SITE_RECORD: ConfigRecord({keys.SITE_NAME: "Alder Bank", "text": "a record's text"})}
        assert disallowed_fields(extra, policy) == ["site.text"]
    secure = reply_policy("train", "collect_masked_vectors")
    assert keys.SITE_NAME in secure.records["fitres.metrics"]  # SecAgg+: the FitRes keeps no other record


def test_simulated_sites_are_named_by_their_partition_column_in_partition_order():
    from finfed.config import load_config
    from finfed.tasks import task_class

    config = load_config(None, ["federation.num_sites=3", "data.synthetic_size=90"])
    records = task_class(config).records
    assert site_names(config.data, 3, records) == ["institution-0", "institution-1", "institution-2"]
    iid = load_config(None, ["federation.num_sites=3", "data.synthetic_size=90", "data.partitioner=iid"])
    assert site_names(iid.data, 3, records) == ["site-0", "site-1", "site-2"]


def test_names_reach_every_report_beside_the_ids(tmp_path, capsys):
    run_dir = finished_run(tmp_path, names=NAMES)
    assert main(["report", str(run_dir)]) == 0
    capsys.readouterr()
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    page = page_text((run_dir / "report.html").read_text(encoding="utf-8"))
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    for label in LABELS:
        assert f"| {label} |" in markdown  # the privacy tables' rows
        assert label in page
    assert [s["name"] for s in report["sites"].values()] == LABELS
    assert [s["site-name"] for s in report["sites"].values()] == list(NAMES.values())
    assert {s["site-name"] for s in report["rounds"][1]["sites"]} == set(NAMES.values())


def test_a_refusing_site_is_named_in_the_verdict(tmp_path):
    report = build_report(finished_run(tmp_path, names=NAMES, refused_from=3))
    assert "site 1 (Harbor Savings Bank) refused round(s) 3" in report["verdict"]["summary"]
    assert "site 0 (Alder Bank): rounds 3" in render_markdown(report)


def test_unnamed_records_keep_the_plain_ids(tmp_path):
    report = build_report(finished_run(tmp_path))
    assert [s["name"] for s in report["sites"].values()] == ["site 0", "site 1"]
    assert all("site-name" not in s for s in report["sites"].values())


def test_a_deployed_site_sends_the_name_its_site_toml_gives_and_only_a_plain_one(tmp_path):
    from deployment_harness import fill_site, make_consortium, site_data

    from finfed.deploy.site_config import load_site_config

    consortium = make_consortium(tmp_path)
    site = consortium.sites[0]
    path = fill_site(consortium, site, site_data(tmp_path, 3, rows_per_site=40)[0])
    assert load_site_config(path).node_config()[keys.NODE_SITE_NAME] == site.name
    path.write_text(path.read_text().replace(f'name = "{site.name}"', 'name = "../bank a"', 1))
    with pytest.raises(ConfigError, match=r"\[site\] name: must be lower-case letters"):
        load_site_config(path)


def test_a_sites_ledger_report_names_the_site_its_files_name(tmp_path):
    from finfed.reporting.ledger_report import site_of

    deployed = tmp_path / "bank-a"
    deployed.mkdir()
    (deployed / "site.toml").write_text('[site]\nname = "bank-a"\nid = 0\n', encoding="utf-8")
    assert site_of(deployed / "privacy-ledger.json", deployed) == "bank-a"
    run = tmp_path / "run"
    (run / "ledgers").mkdir(parents=True)
    (run / "privacy.json").write_text(json.dumps({"sites": {"1": {"site-name": "Harbor Savings Bank"}}}))
    assert site_of(run / "ledgers" / "site-1.json", None) == "Harbor Savings Bank"  # finfed simulate's ledgers
    assert site_of(run / "ledgers" / "site-0.json", None) == ""  # unnamed: the report shows the path only
    (run / "privacy.json").write_text("{not json")
    assert site_of(run / "ledgers" / "site-1.json", None) == ""
