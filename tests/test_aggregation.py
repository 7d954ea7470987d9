"""Sites whose gateway aggregates its clients' updates and sends one update upstream."""

import pytest

from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.scenario import load_scenario
from fedhq_sim.tables import links_frame
from tests.conftest import tiny_scenario_dict


def _aggregating_yard():
    data = tiny_scenario_dict()
    data["sites"][1]["aggregator"] = "rpi5"
    data["sites"][1]["devices"][0]["count"] = 3
    data["training"].update(rounds=2, clients_per_round=5)
    return data


def test_an_aggregating_gateway_sends_one_update_per_round_over_its_backhaul(write_scenario):
    simulation = Simulation(load_scenario(write_scenario(_aggregating_yard())))
    result = simulation.run()
    gateway = [p for p in result.phases if p.client == "yard/aggregator"]
    for r in (1, 2):
        phases = [p.phase for p in gateway if p.round == r]
        assert phases == ["download", "compute", "upload"]
    assert all(p.client_id < 0 and p.status == "completed" and p.energy_j > 0 for p in gateway)
    links = links_frame(simulation.network.samples, simulation.network.links)
    for name in ("site:yard->core", "core->site:yard"):
        assert links.loc[links["link"] == name, "flows"].max() == 1  # one model down, one update up
    for record in result.rounds[1:]:
        assert record.reported == record.selected == 5


def test_members_train_and_upload_after_the_gateway_has_the_model(write_scenario):
    result = Simulation(load_scenario(write_scenario(_aggregating_yard()))).run()
    for r in (1, 2):
        fetched = next(p.end_s for p in result.phases if p.round == r and p.client == "yard/aggregator")
        members = [p for p in result.phases if p.round == r and p.site == "yard" and p.client_id >= 0]
        assert members and all(p.start_s >= fetched for p in members if p.phase == "download")
        sent = [p for p in result.phases if p.round == r and p.client == "yard/aggregator" and p.phase == "upload"]
        assert sent[0].start_s >= max(p.end_s for p in members if p.phase == "upload")


def test_aggregating_at_the_gateway_learns_as_flat_fedavg_does(write_scenario):
    # Sample-weighted FedAvg of the site's FedAvg equals FedAvg over all its clients.
    data = _aggregating_yard()
    data["training"].update(rounds=3, local_epochs=2, learning_rate=0.2)
    flat = tiny_scenario_dict() | {"sites": [dict(s) for s in data["sites"]], "training": data["training"]}
    del flat["sites"][1]["aggregator"]
    hierarchical = Simulation(load_scenario(write_scenario(data, "h.yaml"))).run().rounds
    reference = Simulation(load_scenario(write_scenario(flat, "f.yaml"))).run().rounds
    assert hierarchical[-1].deployed_accuracy > hierarchical[0].fp32_accuracy + 0.3
    assert hierarchical[0].fp32_accuracy == reference[0].fp32_accuracy  # nothing deployed yet
    for ours, theirs in zip(hierarchical[1:], reference[1:], strict=True):
        assert ours.deployed_accuracy == pytest.approx(theirs.deployed_accuracy, abs=0.03)


def test_an_unknown_aggregator_profile_names_its_key(write_scenario, capsys):
    data = _aggregating_yard()
    data["sites"][1]["aggregator"] = "raspberry_pi_9"
    assert main(["validate", str(write_scenario(data))]) == 2
    assert "sites[1].aggregator: unknown device profile 'raspberry_pi_9'" in capsys.readouterr().err


def test_a_gateway_cut_off_by_an_outage_fails_its_members_with_the_reason(write_scenario):
    data = _aggregating_yard()
    data["training"]["rounds"] = 1
    data["network"] = {
        "outages": [{"link": "backhaul:yard", "start": "0 s", "duration": "1 h"}],
        "stall_timeout": "1 s",
    }
    result = Simulation(load_scenario(write_scenario(data))).run()
    yard = [p for p in result.phases if p.site == "yard"]
    assert [p.status for p in yard if p.client_id < 0] == ["failed"]
    members = [p for p in yard if p.client_id >= 0]
    assert len(members) == 3 and all(p.status == "failed" for p in members)
    assert all(p.reason == "the site's aggregator did not get the global model" for p in members)
    record = result.rounds[-1]
    assert (record.failed, record.reported) == (3, 2)
    assert record.deployed_accuracy == pytest.approx(record.deployed_accuracy)  # the hall still trained


def _one_round(data, **network):
    data["training"]["rounds"] = 1
    data["network"] = network
    return data


def test_a_straggling_member_is_cut_off_and_the_others_are_forwarded(write_scenario):
    data = _one_round(_aggregating_yard(), outages=[{"link": "access:yard/rpi5-0", "start": "0 s", "duration": "1 h"}])
    result = Simulation(load_scenario(write_scenario(data))).run()
    gateway = [p for p in result.phases if p.client == "yard/aggregator"]
    assert [(p.phase, p.status) for p in gateway] == [
        ("download", "completed"),
        ("compute", "completed"),
        ("upload", "completed"),
    ]
    straggler = [p for p in result.phases if p.client == "yard/rpi5-0"]
    assert straggler[-1].status == "dropped" and straggler[-1].end_s < 600
    record = result.rounds[-1]
    assert (record.reported, record.dropped, record.failed) == (4, 1, 0)


def test_a_member_that_goes_offline_while_the_gateway_fetches_the_model_fails(write_scenario):
    data = _aggregating_yard()
    data["training"]["rounds"] = 1
    data["availability"] = {"maintenance": [{"client": "yard/rpi5-1", "start": "1 ms", "duration": "1 h"}]}
    result = Simulation(load_scenario(write_scenario(data))).run()
    member = [p for p in result.phases if p.client == "yard/rpi5-1"]
    assert [p.status for p in member] == ["failed"] and "went offline" in member[0].reason
    assert result.rounds[-1].reported == 4


def test_a_gateway_whose_upload_fails_fails_its_members(write_scenario):
    data = _one_round(
        _aggregating_yard(),
        outages=[{"link": "backhaul:yard", "start": "100 ms", "duration": "1 h"}],
        stall_timeout="1 s",
    )
    result = Simulation(load_scenario(write_scenario(data))).run()
    gateway = [p for p in result.phases if p.client == "yard/aggregator"]
    assert gateway[-1].phase == "upload" and gateway[-1].status == "failed"
    record = result.rounds[-1]
    assert (record.failed, record.reported, record.dropped) == (3, 2, 0)
