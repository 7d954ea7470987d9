"""A round's record from its phases (recorder.round_record): every selected client is counted once."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fedhq_sim.profiles import ProfileLibrary
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.recorder import RoundTimes, round_record
from fedhq_sim.records import PhaseRecord
from fedhq_sim.scenario import ClientSpec
from tests.conftest import PROFILES

LIBRARY = ProfileLibrary(PROFILES)
PI = LIBRARY.device("rpi4", referenced_from=PROFILES, key="k")
WIFI = LIBRARY.link("wifi6", referenced_from=PROFILES, key="k")
ENDINGS = ("reported", "dropped", "failed", "unable", "rejected", "cancelled")


def _phase(cid: int, phase: str, status: str, start: float, end: float) -> PhaseRecord:
    return PhaseRecord(1, cid, f"c{cid}", "hall", "rpi4", "wifi6", phase, "ptq8", 8, 100, start, end, status, 1.0)


@given(st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=30), st.floats(1.0, 100.0))
def test_every_selected_client_is_counted_once_whatever_ended_its_round(endings, latency):
    clients = [ClientSpec(i, f"c{i}", "hall", PI, WIFI) for i in range(len(endings))]
    phases, losses = [], []
    for cid, ending in enumerate(endings):
        phases.append(_phase(cid, "download", "completed", 0.0, 0.5))
        if ending == "unable":
            phases[-1] = _phase(cid, "compute", "unable", 0.0, 0.0)
        elif ending == "reported":
            phases += [_phase(cid, "compute", "completed", 0.5, 0.75), _phase(cid, "upload", "completed", 0.75, 1.0)]
            losses.append(0.5)
        else:
            phases.append(_phase(cid, "compute", "completed", 0.5, 0.75))
            phases.append(_phase(cid, "upload", "rejected" if ending == "rejected" else ending, 0.75, 1.0))
    strategy = Strategy("ptq", 8)
    record = round_record(
        1,
        RoundTimes(0.0, latency, latency, 0.0),
        clients,
        range(len(clients)),
        [(c.client_id, strategy) for c in clients],
        losses,
        set(),
        phases,
        "ok",
    )
    counted = {e: getattr(record, e) for e in ENDINGS}
    assert counted == {e: endings.count(e) for e in ENDINGS}
    assert record.n_ptq == len(endings) - endings.count("unable")
    busy = 0.25 * (len(endings) - endings.count("unable"))
    assert math.isclose(record.energy_idle_j, PI.power.idle * (len(endings) * latency - busy), rel_tol=1e-9)
