"""Peer benchmark: fedhq-sim's full mode against Flower's simulation engine, one FedAvg workload.

What it measures: host wall seconds per federated round, and of the whole run, for the same
FedAvg workload on both systems, in one process tree on this machine, alternating the two
(fedhq-sim, Flower, fedhq-sim, Flower, ... ``--repeats`` times) so that host noise hits both
alike. Per side it prints the median over repeats of the round median (rounds after the
first: the first warms caches, worker imports and, for Flower, the Ray actors), the median
whole-run time, and the final fp32 test accuracy; then ``ratio: flower_round / fedhq_round``.
It runs in its own environment, bench/.venv-flower, where Flower is installed (it is not a
dependency of fedhq-sim):

    bash bench/flower_env.sh --repeats 3          # or: make bench-flower
    # which builds the venv once, then runs:
    bench/.venv-flower/bin/python bench/flower_peer.py --rounds 5 --repeats 3

The workload: a scenario this script writes to a temporary folder, 20 clients in one site,
all 20 every round, ``small_cnn`` on the bundled ``digits`` (Dirichlet alpha 0.5), one
local epoch of plain SGD (no momentum, lr 0.05, batch 16, reshuffled each epoch), FedAvg
weighted by sample counts, policy ``all-fp32`` (no quantized training), 5 rounds.

The same on both sides: the data partition (Flower's clients take their shares from
``fedhq_sim.world.federated_data``, partition-id i = fedhq-sim client i), the initial model
(``build_model`` with the scenario's seed), the local training loop and its per-client,
per-round shuffle seed (``fedhq_sim.round_work.client_seed``), FedAvg over every client, fp32
evaluation of the global model on the same test set after each round, one torch thread in
every worker and in the server, and two worker processes on the 2 CPUs (fedhq-sim's
``ProcessExecutor(2)``; Flower's Ray backend with ``num_cpus=1`` per client on 2 CPUs).

Not the same: fedhq-sim's round does more work. It charges every client's and the server's
operations as simulated time on device profiles (each piece traced once, then its profile
reused), plays the round out on a SimPy clock (downloads, uploads through the plant's network, the deadline), serializes
updates into its payload format, and the server also deploys an int8 (PTQ) copy of every
new global model and evaluates it besides the fp32 evaluation. Flower's round instead
passes messages through its in-memory SuperLink (pulled every 0.1 s, its default) and Ray's
object store, and runs no federated (client-side) evaluation here (``fraction_evaluate=0``).
Whole-run time includes, for fedhq-sim, loading the scenario, the partition, the
feasibility analysis and spawning the worker pool; for Flower, loading the same partition,
starting and stopping Ray and its actors. Nothing is downloaded at run time (Flower's
telemetry is switched off).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.functional import cross_entropy

from fedhq_sim.data import FederatedData, Samples
from fedhq_sim.models import build_model
from fedhq_sim.round_work import client_seed
from fedhq_sim.scenario import load_scenario
from fedhq_sim.world import federated_data

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 20
WORKERS = 2
EVAL_BATCH = 256  # as fedhq-sim's server evaluation


def write_scenario(folder: Path, rounds: int) -> Path:
    data = {
        "name": "flower-peer",
        "description": "FedAvg in fp32: 20 clients, all 20 every round, small_cnn on digits, alpha 0.5.",
        "seed": 1,
        "profiles_dir": str(REPO / "device_profiles"),
        "server": {"device": "x86_server", "link": "ethernet_10g"},
        "sites": [
            {
                "name": "hall",
                "backhaul": "fibre_1g",
                "devices": [{"device": "ipc_n100", "link": "ethernet_1g", "count": CLIENTS}],
            }
        ],
        "data": {"dataset": "digits", "dirichlet_alpha": 0.5, "test_fraction": 0.2, "min_client_samples": 8},
        "model": "small_cnn",
        "training": {
            "rounds": rounds,
            "clients_per_round": CLIENTS,
            "local_epochs": 1,
            "batch_size": 16,
            "learning_rate": 0.05,
            "round_deadline": "1 h",
        },
        "policy": {"name": "all-fp32"},
    }
    path = folder / "flower_peer.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class Run:
    rounds_s: list[float]  # host seconds of each round, in order
    whole_s: float
    final_accuracy: float

    @property
    def round_median_s(self) -> float:
        later = self.rounds_s[1:] or self.rounds_s
        return statistics.median(later)


# --- fedhq-sim --------------------------------------------------------------------------


def run_fedhq(path: Path) -> Run:
    from fedhq_sim.engine import Simulation
    from fedhq_sim.executors import ProcessExecutor

    start = time.perf_counter()
    with ProcessExecutor(WORKERS) as executor:
        sim = Simulation(load_scenario(path), executor)
        sim.run()
    whole = time.perf_counter() - start
    return Run([t.host_s for t in sim.host_timing], whole, sim.rounds[-1].fp32_accuracy)


# --- Flower: the ClientApp's work (runs in Ray's actor processes) --------------------------
#
# These functions are looked up by reference from this module, imported as ``flower_peer``
# (Ray hands workers the driver's sys.path, which starts with bench/), so each actor keeps
# its own partition cache for the whole run instead of unpickling a copy with every message.


@cache
def scenario_data(path: str) -> tuple[FederatedData, int]:
    """The scenario's partition and seed (computed once per process)."""
    scenario = load_scenario(Path(path))
    return federated_data(scenario), scenario.spec.seed


def local_train(model: torch.nn.Module, data: Samples, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """fedhq-sim's local loop without its tracing: plain SGD, each pass reshuffled."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = cross_entropy(model(data.x[index]), data.y[index])
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    last_pass = losses[-math.ceil(len(data) / batch_size) :]
    return sum(last_pass) / len(last_pass)


def flower_train(message: Any, context: Any) -> Any:
    """The ClientApp's train function: one client's local epoch from the received global model."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    torch.set_num_threads(1)  # as fedhq-sim's workers
    config = message.content["config"]
    data, seed = scenario_data(str(config["scenario"]))
    partition = int(context.node_config["partition-id"])
    shard = data.clients[partition]
    model = build_model("small_cnn", data.num_classes, seed=0, input_shape=data.input_shape)
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    loss = local_train(
        model,
        shard,
        int(config["local-epochs"]),
        int(config["batch-size"]),
        float(config["lr"]),
        client_seed(seed, int(config["server-round"]), partition),
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(shard)}),
        }
    )
    return Message(content=content, reply_to=message)


def fp32_accuracy(model: torch.nn.Module, samples: Samples) -> float:
    correct = 0
    model.eval()
    with torch.no_grad():
        for x, y in zip(torch.split(samples.x, EVAL_BATCH), torch.split(samples.y, EVAL_BATCH), strict=True):
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(samples)


# --- Flower: the ServerApp and the simulation (in this process) ---------------------------


def run_flower(peer: Any, path: Path, rounds: int) -> Run:
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    start = time.perf_counter()
    scenario = load_scenario(path)
    spec, t = scenario.spec, scenario.spec.training
    data = federated_data(scenario)  # the server's copy (test set), loaded anew each run
    stamps: list[float] = []  # after each centralized evaluation: round 0 (initial), 1, 2, ...
    accuracies: list[float] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(scenario.model, data.num_classes, seed=0, input_shape=data.input_shape)
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracies.append(fp32_accuracy(model, data.test))
        stamps.append(time.perf_counter())
        return MetricRecord({"accuracy": accuracies[-1]})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = build_model(scenario.model, data.num_classes, seed=spec.seed, input_shape=data.input_shape)
        strategy = FedAvg(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=CLIENTS, min_available_nodes=CLIENTS
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord(
                {
                    "scenario": str(path),
                    "local-epochs": t.local_epochs,
                    "batch-size": t.batch_size,
                    "lr": t.learning_rate,
                }
            ),
            evaluate_fn=evaluate,
        )

    client_app = ClientApp()
    client_app.train()(peer.flower_train)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=CLIENTS,
        backend_config={
            "init_args": {"num_cpus": WORKERS, "num_gpus": 0},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    whole = time.perf_counter() - start
    if len(stamps) != rounds + 1:
        raise RuntimeError(f"Flower evaluated {len(stamps)} times, expected {rounds + 1}: the simulation failed")
    return Run([b - a for a, b in itertools.pairwise(stamps)], whole, accuracies[-1])


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first round is left out of the round median)")

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no traffic to Flower's servers
    import flwr  # after the telemetry switch: flwr reads it on import

    logging.getLogger("flwr").setLevel(logging.WARNING)  # per-round INFO lines would bury the table
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    peer = importlib.import_module("flower_peer")  # see the note above flower_train
    torch.set_num_threads(1)  # the server side of both (fedhq-sim sets it itself during a run)

    runs: dict[str, list[Run]] = {"fedhq-sim": [], "flower": []}
    with tempfile.TemporaryDirectory() as folder:
        path = write_scenario(Path(folder), args.rounds)
        data = federated_data(load_scenario(path))
        sizes = sorted(len(c) for c in data.clients)
        print(
            f"workload: {CLIENTS} clients (shards of {sizes[0]}..{sizes[-1]} samples, {sum(sizes)} in all), "
            f"{args.rounds} rounds, small_cnn on digits, test set {len(data.test)}; flwr {flwr.__version__}, "
            f"torch {torch.__version__}, {os.cpu_count()} CPUs",
            flush=True,
        )
        for repeat in range(1, args.repeats + 1):
            fedhq = run_fedhq(path)
            runs["fedhq-sim"].append(fedhq)
            flower = run_flower(peer, path, args.rounds)
            runs["flower"].append(flower)
            for name, run in (("fedhq-sim", fedhq), ("flower", flower)):
                rounds = " ".join(f"{s:.2f}" for s in run.rounds_s)
                print(
                    f"  repeat {repeat} {name:9s}: rounds [{rounds}] s, whole run {run.whole_s:.2f} s, "
                    f"fp32 accuracy {run.final_accuracy:.3f}",
                    flush=True,
                )

    print()
    print(f"{'side':10s} {'round median (s)':>17s} {'whole-run median (s)':>21s} {'final fp32 acc':>15s}")
    medians = {}
    for name, side in runs.items():
        medians[name] = statistics.median(r.round_median_s for r in side)
        whole = statistics.median(r.whole_s for r in side)
        accuracy = statistics.median(r.final_accuracy for r in side)
        print(f"{name:10s} {medians[name]:17.3f} {whole:21.2f} {accuracy:15.3f}")
    print(
        f"(round median: rounds 2..{args.rounds} of each run, then the median over {args.repeats} repeats; "
        "fedhq-sim's round also charges simulated time and deploys and evaluates an int8 PTQ model)"
    )
    gaps = [abs(a.final_accuracy - b.final_accuracy) for a, b in zip(runs["fedhq-sim"], runs["flower"], strict=True)]
    print(f"largest gap between the two sides' final fp32 accuracies in one repeat: {max(gaps):.4f}")
    print(f"ratio: flower_round / fedhq_round = {medians['flower'] / medians['fedhq-sim']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
