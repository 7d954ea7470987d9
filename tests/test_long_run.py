"""A long run keeps only its results: the Python heap grows by the records it adds, no more."""

import tracemalloc

from fedhq_sim.engine import Simulation
from fedhq_sim.scenario import load_scenario
from tests.conftest import tiny_scenario_dict


def test_a_round_leaves_nothing_behind_but_its_records(write_scenario):
    """Real work every round (three clients, fp32/PTQ/QAT, the server's evaluation): from round
    8 to 24 the heap may grow by what the kept records take (about 200 B each: nine phases, a
    round and its link samples, 34 a round), not by a round's updates, models or profiles,
    which would be tens of KiB a round."""
    data = tiny_scenario_dict()
    data["training"]["rounds"] = 24
    simulation = Simulation(load_scenario(write_scenario(data)))
    heap: dict[int, tuple[int, int]] = {}

    def on_round(record, _host_s) -> None:
        if record.round == 5:
            tracemalloc.start()
        if record.round in (8, 24):
            kept = len(simulation.phases) + len(simulation.network.samples) + len(simulation.rounds)
            heap[record.round] = (tracemalloc.get_traced_memory()[0], kept)

    try:
        simulation.run(on_round)
    finally:
        tracemalloc.stop()
    (before, kept_before), (after, kept_after) = heap[8], heap[24]
    per_record = (after - before) / (kept_after - kept_before)
    assert per_record < 400, f"{per_record:.0f} B per record kept: something else stays behind"
