"""The ``fedhq-sim`` command line: thin commands over the library.

Exit codes: 0 success, 2 bad input (one line naming file, key path and problem), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from fedhq_sim.errors import InputError
from fedhq_sim.records import RoundRecord

EXAMPLES = """examples:
  fedhq-sim run scenarios/quickstart.yaml
  fedhq-sim run scenarios/quickstart.yaml --out results/qs --overwrite
  fedhq-sim validate scenarios/quickstart.yaml
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedhq-sim",
        description="Simulate federated learning with hybrid PTQ/QAT quantization on a plant fleet.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="simulate a scenario and write results and plots")
    run.add_argument("scenario", type=Path, help="scenario YAML file")
    run.add_argument("--out", type=Path, help="results folder (default: results/<name>-<date-time>)")
    run.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    validate = commands.add_parser("validate", help="check a scenario and its profiles without running it")
    validate.add_argument("scenario", type=Path, help="scenario YAML file")
    return parser


def _progress_line(total: int, record: RoundRecord, host_s: float) -> str:
    return (
        f"round {record.round:>3}/{total}  sim {record.end_s:9.3f} s  latency {record.latency_s:8.3f} s  "
        f"reported {record.reported}/{record.selected}  deployed acc {record.deployed_accuracy:.3f}  "
        f"fp32 acc {record.fp32_accuracy:.3f}  [host {host_s:.1f} s]"
    )


def _run(args: argparse.Namespace) -> int:
    from fedhq_sim.engine import Simulation
    from fedhq_sim.plots import plot_accuracy_vs_time, plot_latency_breakdown, save
    from fedhq_sim.results import ResultsWriter, prepare_output_dir
    from fedhq_sim.scenario import load_scenario
    from fedhq_sim.tables import latency_breakdown, phases_frame, rounds_frame

    scenario = load_scenario(args.scenario)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = prepare_output_dir(args.out or Path("results") / f"{scenario.spec.name}-{stamp}", overwrite=args.overwrite)
    say = (lambda _text: None) if args.quiet else (lambda text: print(text, flush=True))
    writer = ResultsWriter(out, scenario)
    writer.write_inputs()
    host_start = time.perf_counter()
    simulation = Simulation(scenario)
    total = scenario.spec.training.rounds
    say(f"{scenario.spec.name}: {len(scenario.clients)} clients, {total} rounds, policy {scenario.spec.policy.name}")

    def on_round(record: RoundRecord, host_s: float) -> None:
        writer.write_progress(simulation.rounds, simulation.phases)
        say(_progress_line(total, record, host_s))

    result = simulation.run(on_round)
    rounds, phases = rounds_frame(result.rounds), phases_frame(result.phases)
    save(plot_accuracy_vs_time(rounds), out / "accuracy_vs_time.png")
    save(plot_latency_breakdown(latency_breakdown(rounds, phases)), out / "round_latency.png")
    writer.write_run_info({"host_seconds": round(time.perf_counter() - host_start, 3)})
    say(f"results written to {out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fedhq_sim.engine import federated_data
    from fedhq_sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    federated_data(scenario)  # the data split can fail too (too many clients for the data)
    sites = len(scenario.spec.sites)
    print(
        f"{args.scenario}: valid ({len(scenario.clients)} clients on {sites} sites, policy {scenario.spec.policy.name})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m fedhq_sim``."""
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "validate": _validate}
    try:
        return handlers[args.command](args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed rounds are saved in the results folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
