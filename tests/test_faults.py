"""A site that dies mid-run does not stop the run; every missing site is recorded per round."""

import pytest
from inprocess_grid import NODE_BASE, InProcessGrid, message_round, serve

from finfed.coordinator.sampling import SiteSampler
from finfed.errors import RunError
from finfed.flower_app.client import app as client_app
from finfed.runs.outputs import read_metrics, read_status

DEAD = NODE_BASE + 2  # site 2


class FakeGrid:
    def __init__(self, online):
        self.online = online

    def get_node_ids(self):
        return list(self.online)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _sampler(tiny_config, *overrides, clock=None):
    clock = clock or FakeClock()
    config = tiny_config("federation.num_sites=3", "federation.round_timeout=30", *overrides)
    return SiteSampler(config.federation, clock=clock, sleep=clock.sleep), clock


def test_first_round_waits_for_every_site_then_goes_on_with_min_sites(tiny_config):
    sampler, clock = _sampler(tiny_config, "federation.min_sites=2")
    assert sampler.train_nodes(FakeGrid([1, 2])) == [1, 2]
    assert clock.now == pytest.approx(30)  # waited the round timeout for the third site
    clock.now = 0.0
    assert sampler.train_nodes(FakeGrid([1, 2])) == [1, 2]  # later rounds: no wait for a dead site
    assert clock.now == 0.0


def test_a_share_of_the_sites_online_evaluates_at_least_one_unless_the_share_is_0(tiny_config):
    every = _sampler(tiny_config)[0]
    assert every.evaluate_nodes(FakeGrid([1, 2, 3])) == [1, 2, 3]
    tenth = _sampler(tiny_config, "federation.fraction_evaluate=0.1")[0]
    assert len(tenth.evaluate_nodes(FakeGrid([1, 2, 3]))) == 1
    half = _sampler(tiny_config, "federation.num_sites=10", "federation.fraction_evaluate=0.5")[0]
    chosen = half.evaluate_nodes(FakeGrid(list(range(1, 11))))
    assert len(chosen) == 5 and set(chosen) <= set(range(1, 11)) and chosen == sorted(chosen)
    assert _sampler(tiny_config, "federation.fraction_evaluate=0")[0].evaluate_nodes(FakeGrid([1, 2, 3])) == []


def test_too_few_sites_online_is_a_clear_error(tiny_config):
    sampler, _ = _sampler(tiny_config, "federation.min_sites=2")
    with pytest.raises(RunError, match=r"only 1 of 3 sites online after waiting 30s.*needs 2 \(`federation.min_sites`"):
        sampler.train_nodes(FakeGrid([1]))
    every_site, _ = _sampler(tiny_config)  # min_sites 0: every site, every round
    every_site.train_nodes(FakeGrid([1, 2, 3]))
    with pytest.raises(RunError, match="only 2 of 3 sites online"):
        every_site.train_nodes(FakeGrid([1, 2]))


def _kill_site_2(rounds):
    """Script site 2's death by round: "unavailable" (the SuperLink answers NODE_UNAVAILABLE for it), "silent"
    (no reply: the round times out) or "gone" (no longer listed online, for good)."""
    def before_send(grid, message):
        server_round = message_round(message)
        grid.unavailable = {DEAD} if rounds.get(server_round) == "unavailable" else set()
        grid.silent = {DEAD} if rounds.get(server_round) == "silent" else set()
        if rounds.get(server_round + 1) == "gone" and message.metadata.message_type == "evaluate":
            grid.gone = {DEAD}  # it disconnects at the end of this round: the next round's sampling misses it
    return before_send


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_a_dead_site_is_recorded_and_the_run_completes_with_the_others(tiny_config, secure):
    config = tiny_config("federation.num_sites=3", "federation.min_sites=2", "federation.rounds=4",
                         f"federation.secure_aggregation={str(secure).lower()}", "privacy.membership_audit=false")
    grid = InProcessGrid(client_app.app, config)
    grid.before_send = _kill_site_2({2: "unavailable", 3: "silent", 4: "gone"})
    serve(config, grid)
    run_dir = config.resolved_run_dir
    status = read_status(run_dir)
    assert status["state"] == "complete"
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert [s["site"] for s in rounds[1]["sites"]] == [0, 1, 2] and rounds[1]["failures"] == []
    for record in rounds[2:]:
        assert [s["site"] for s in record["sites"]] == [0, 1]
        assert len(record["failures"]) == 1
        assert record["failures"][0].startswith(f"site 2 (institution-2, node {DEAD}): ")  # named, with its node
    reasons = [r["failures"][0] for r in rounds[2:]]
    if secure:
        assert all("dropped out of SecAgg+" in reason for reason in reasons[:2])
    else:
        assert "error 5: Error: Node Unavailable" in reasons[0] and "no reply within" in reasons[1]
    assert "offline (not connected to the coordinator)" in reasons[2]
    assert status["site_failures"] == {str(r): rounds[r]["failures"] for r in (2, 3, 4)}


def test_sites_dropping_before_and_between_secagg_stages_are_unmasked_around(tiny_config):
    """The case SecAgg+ exists for: in round 2 site 2 dies after sharing its keys, before sending its masked
    vector; site 3 is dead from the start of the round (the case Flower 1.42 itself cannot unmask)."""
    config = tiny_config("federation.num_sites=4", "federation.min_sites=2", "federation.rounds=2",
                         "privacy.enabled=false", "federation.secure_aggregation=true",
                         "privacy.membership_audit=false")
    grid = InProcessGrid(client_app.app, config)

    def before_send(grid, message):
        stage = message.content["secaggplus_configs"]["stage"] if "secaggplus_configs" in message.content else ""
        training_round_2 = message_round(message) == 2 and message.metadata.message_type == "train"
        grid.unavailable = ({NODE_BASE + 3} if training_round_2 else set()) | (
            {DEAD} if training_round_2 and stage == "collect_masked_vectors" else set())
    grid.before_send = before_send
    serve(config, grid)
    rounds = read_metrics(config.resolved_run_dir)
    assert read_status(config.resolved_run_dir)["state"] == "complete"
    assert [s["site"] for s in rounds[2]["sites"]] == [0, 1]
    assert [f.split(" (")[0] for f in rounds[2]["failures"]] == ["site 2", "site 3"]
    assert all("dropped out of SecAgg+" in f for f in rounds[2]["failures"])
    # Unmasked correctly: a leftover mask would scatter the parameters over the whole clipping range.
    assert rounds[2]["central"]["loss"] < 2 * rounds[1]["central"]["loss"]


def test_with_min_sites_0_a_failed_site_stops_the_run_with_the_reason(tiny_config):
    config = tiny_config("federation.num_sites=3", "federation.rounds=2", "privacy.membership_audit=false")
    grid = InProcessGrid(client_app.app, config)
    grid.before_send = _kill_site_2({2: "unavailable"})
    with pytest.raises(RunError, match=r"round 2: 2 site\(s\) returned an update, 3 needed; failures: site 2"):
        serve(config, grid)
    status = read_status(config.resolved_run_dir)
    assert status["state"] == "failed" and "Node Unavailable" in status["error"]


@pytest.mark.slow
def test_in_flower_simulation_a_failing_site_is_recorded_and_the_others_finish(median_run_with_a_failing_site):
    """Through Flower's simulation engine (the shared run in tests/conftest.py, under a median rule): site 2's
    ledger is unreadable, so it refuses every round with an error (the real error reply of a ClientApp that
    raised); with `min_sites=2` the run completes."""
    run_dir, ledgers = median_run_with_a_failing_site
    assert read_status(run_dir)["state"] == "complete"
    rounds = read_metrics(run_dir)
    for record in rounds[1:]:
        assert [s["site"] for s in record["sites"]] == [0, 1]
        # the ledger's error stays in site 2's log; the coordinator gets its category only
        assert len(record["failures"]) == 1 and ": error 2: privacy refusal: " in record["failures"][0]
    assert rounds[2]["failures"][0].startswith("site 2 (institution-2, node ")  # named once its evaluation replied
    assert (ledgers / "site-2.json").read_text() == "{not json"
    assert "site-2.json is unreadable" in (run_dir / "sites" / "site-2" / "site.log").read_text()
