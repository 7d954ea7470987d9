"""The ``fedhq-sim`` command line: thin commands over the library.

Exit codes: 0 success, 2 bad input (one line naming file, key path and problem), 1 failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fedhq_sim.errors import InputError, SimulationError
from fedhq_sim.interrupts import Terminated, stop_signals

if TYPE_CHECKING:  # the engine imports torch; the CLI loads it only for commands that need it
    from fedhq_sim.executors import WorkExecutor
    from fedhq_sim.scenario import LoadedScenario

EXAMPLES = """examples:
  fedhq-sim run scenarios/quickstart.yaml
  fedhq-sim run scenarios/quickstart.yaml --out results/qs --overwrite
  fedhq-sim validate scenarios/quickstart.yaml
  fedhq-sim analyze scenarios/quickstart.yaml
  fedhq-sim compare scenarios/fedhq_comparison.yaml --seeds 1 2 3 --target 0.8 --out results/cmp
  fedhq-sim compare scenarios/quickstart.yaml --policies all-ptq hybrid --set sites[1].backhaul=fibre_1g
  fedhq-sim sweep scenarios/quickstart.yaml --set training.clients_per_round=4,8,12 --seeds 1 2
  fedhq-sim run scenarios/large_fleet.yaml --timing-only
  fedhq-sim sweep scenarios/large_fleet.yaml --timing-only --set training.clients_per_round=10,80,240 --seeds 1
  fedhq-sim compare scenarios/fedhq_comparison.yaml --engine ray --address auto
  fedhq-sim report results/qs
  fedhq-sim profile-device --out device_profiles/devices/my_gateway.yaml --power-idle 2.7W --power-active 6.4W
"""


TIMING_ONLY_HELP = (
    "price every computation from its traced work profile instead of running it: the timings of a full run, "
    "for fleets of thousands, and no accuracy"
)


def _engine_arguments(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--engine",
        choices=("process", "ray"),
        default="process",
        help=f"where {what} run: a local process pool (default) or Ray tasks (needs fedhq-sim[ray])",
    )
    command.add_argument(
        "--address",
        help="with --engine ray: an existing cluster (auto, host:6379, ray://host:10001); default: start a local one",
    )


def _check_engine(args: argparse.Namespace) -> None:
    if args.address is not None and args.engine != "ray":
        raise InputError("command line", "--address", "names a Ray cluster: give it with --engine ray")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedhq-sim",
        description="Simulate federated learning with hybrid PTQ/QAT quantization on a plant fleet.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="simulate a scenario and write results and plots")
    run.add_argument("scenario", type=Path, nargs="?", help="scenario YAML file (not with --resume)")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="go on with the run whose results folder this is, from its last completed round",
    )
    run.add_argument("--out", type=Path, help="results folder (default: results/<name>-<date-time>)")
    run.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument(
        "--workers",
        type=int,
        help="processes that run the clients' real work of a round (default: one per CPU core; 1: this process)",
    )
    run.add_argument("--timing-only", action="store_true", help=TIMING_ONLY_HELP)
    _engine_arguments(run, "the clients' work of each round")
    validate = commands.add_parser("validate", help="check a scenario and its profiles without running it")
    validate.add_argument("scenario", type=Path, help="scenario YAML file")
    analyze = commands.add_parser(
        "analyze",
        help="print each client's predicted PTQ/QAT round, data skew and coarse initial assignment",
    )
    analyze.add_argument("scenario", type=Path, help="scenario YAML file")
    analyze.add_argument(
        "--latency-budget", type=float, help="coarse init: round budget (default: the scenario's policy, else 0.1)"
    )
    analyze.add_argument(
        "--max-qat-fraction", type=float, help="coarse init: QAT share cap (default: the scenario's policy, else 0.5)"
    )
    analyze.add_argument("--out", type=Path, help="also write the table as CSV")
    compare = commands.add_parser(
        "compare",
        help="several policies (or scenarios) over several seeds: one table, one figure, one report",
        description="Each (scenario, policy, seed) is a full simulation with policy.name and seed replaced; a "
        "policy keeps the scenario's policy options it accepts (latency_budget, max_qat_fraction, ...). With several "
        "scenarios and no --policies, each runs its own policy.",
    )
    compare.add_argument("scenarios", type=Path, nargs="+", metavar="scenario", help="scenario YAML file(s)")
    compare.add_argument("--policies", nargs="+", help="registered policy names (default, one scenario: six built-ins)")
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value in every run")
    sweep = commands.add_parser(
        "sweep",
        help="a grid over scenario values (fleet size, link class, QAT share, ...): capacity curves",
        description="Every combination of the --set values, for every seed. KEY is a path into the scenario: "
        "training.clients_per_round, sites[0].backhaul, sites[*].devices[0].count (every site), policy.qat_fraction.",
    )
    sweep.add_argument("scenario", type=Path, help="scenario YAML file")
    sweep.add_argument("--set", action="append", required=True, metavar="KEY=V1,V2,...", help="a swept key")
    for batch in (compare, sweep):
        batch.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds (default: 1 2 3)")
        batch.add_argument("--target", type=float, default=0.8, help="deployed accuracy to reach (default 0.8)")
        batch.add_argument("--jobs", type=int, help="runs at a time in worker processes (default: CPU count)")
        batch.add_argument("--out", type=Path, help="results folder (default: results/<name>-<command>-<date-time>)")
        batch.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
        batch.add_argument("--quiet", action="store_true", help="print nothing but errors")
        batch.add_argument("--timing-only", action="store_true", help=TIMING_ONLY_HELP)
        _engine_arguments(batch, "the runs")
    report = commands.add_parser(
        "report",
        help="(re)build the self-contained report.html of a run, compare or sweep results folder",
    )
    report.add_argument("folder", type=Path, help="a results folder written by run, compare or sweep")
    profile = commands.add_parser(
        "profile-device",
        help="measure this machine and write a device profile",
        description="Measure this machine's kernels, memory bandwidth and framework overheads (some seconds) "
        "and write a device profile in the library's format. Power cannot be measured from software: pass it.",
    )
    profile.add_argument("--out", type=Path, help="profile YAML to write (default: print it); its stem is the name")
    profile.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    profile.add_argument("--threads", type=int, help="threads to measure with (default: PyTorch's default here)")
    profile.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed loops per measurement, taken in turns (their mean without the slowest; default 7)",
    )
    profile.add_argument("--passes", type=int, default=3, help="whole measurements, medians taken (default 3)")
    profile.add_argument("--power-idle", help="idle power of the device, e.g. '2.7 W' (meter or datasheet)")
    profile.add_argument("--power-active", help="power while computing, e.g. '6.4 W' (meter or datasheet)")
    return parser


def _run(args: argparse.Namespace) -> int:
    import os
    from contextlib import ExitStack

    from fedhq_sim.executor_choice import open_executor
    from fedhq_sim.files import prepare_output_dir
    from fedhq_sim.policies.choice import choose_policy
    from fedhq_sim.scenario import load_scenario

    workers = args.workers if args.workers is not None else os.cpu_count() or 1
    if workers < 1:
        raise InputError("command line", "--workers", f"must be at least 1, got {workers}")
    _check_engine(args)
    resumed = _resumed(args) if args.resume is not None else None
    if args.timing_only:
        if (args.workers is not None and args.workers > 1) or args.engine == "ray":
            raise InputError("command line", "--workers/--engine", "timing-only mode runs no client work to spread")
        workers = 1
    if resumed is not None:
        scenario, checkpoint = resumed
        out = args.resume
    else:
        if args.scenario is None:
            raise InputError("command line", "scenario", "give a scenario file, or --resume DIR")
        scenario, checkpoint = load_scenario(args.scenario), None
        choose_policy(scenario)  # a bad policy section costs no output folder and no workers
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = prepare_output_dir(
            args.out or Path("results") / f"{scenario.spec.name}-{stamp}", overwrite=args.overwrite
        )
    with ExitStack() as stack:
        executor = open_executor(stack, args.engine, workers, args.address)
        try:
            return _simulate_into(args, scenario, out, executor, checkpoint)
        except (KeyboardInterrupt, Terminated) as stop:
            code = 143 if isinstance(stop, Terminated) else 130
            raise RunInterruptedError(
                code, f"every completed round is in {out}; go on with: fedhq-sim run --resume {out}"
            ) from None


def _resumed(args: argparse.Namespace) -> tuple[LoadedScenario, dict]:
    """The scenario and checkpoint of the run to go on with; only the engine may differ."""
    from fedhq_sim.runner import resumable

    if args.scenario is not None or args.out is not None:
        raise InputError("command line", "--resume", "goes on in its own folder with its own scenario: give neither")
    scenario, checkpoint = resumable(args.resume, timing_only=args.timing_only)
    args.timing_only = checkpoint["timing_only"]
    return scenario, checkpoint


def _printer() -> Callable[[str], None]:
    """Print progress lines until the reader goes away (``| head``, a closed pipe): then go
    on quietly, since a run's results are its files, not its progress lines."""
    gone = False

    def say(text: str) -> None:
        nonlocal gone
        if gone:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            gone = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit

    return say


def _simulate_into(
    args: argparse.Namespace,
    scenario: LoadedScenario,
    out: Path,
    executor: WorkExecutor | None,
    checkpoint: dict | None = None,
) -> int:
    """The body of ``run``: the library's run into a folder, its progress printed."""
    from fedhq_sim.runner import run_into_folder

    say = (lambda _text: None) if args.quiet else _printer()
    run_into_folder(
        scenario,
        out,
        executor=executor,
        timing_only=args.timing_only,
        checkpoint=checkpoint,
        engine=args.engine,
        say=say,
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fedhq_sim.engine import Simulation
    from fedhq_sim.runner import feasibility_lines
    from fedhq_sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    # The data split and the clients' memory and link checks can fail too.
    for line in feasibility_lines(Simulation(scenario)):
        print(line, file=sys.stderr)
    sites = len(scenario.spec.sites)
    print(
        f"{args.scenario}: valid ({len(scenario.clients)} clients on {sites} sites, policy {scenario.spec.policy.name})"
    )
    return 0


def _analyze(args: argparse.Namespace) -> int:
    import pandas as pd

    from fedhq_sim.engine import Simulation
    from fedhq_sim.policies.choice import choose_policy
    from fedhq_sim.policies.hardware_aware import CoarseOptions
    from fedhq_sim.scenario import load_scenario
    from fedhq_sim.start_table import start_table

    scenario = load_scenario(args.scenario)
    defaults = CoarseOptions().model_dump() | choose_policy(scenario).options.model_dump()
    budget = defaults["latency_budget"] if args.latency_budget is None else args.latency_budget
    fraction = defaults["max_qat_fraction"] if args.max_qat_fraction is None else args.max_qat_fraction
    if not (0 <= budget <= 10 and 0 <= fraction <= 1):
        raise InputError("command line", "--latency-budget/--max-qat-fraction", "expected 0-10 and 0-1")
    table, path = start_table(Simulation(scenario).world, budget, fraction)  # the engine refuses a fleet that can't run
    with pd.option_context("display.max_colwidth", 90, "display.width", 250):
        print(table.to_string(index=False))
    print(
        f"\nall-PTQ critical path (predicted, no other traffic): {path:.4g} s; "
        f"budget x{1 + budget:g}, QAT share at most {fraction:g}"
    )
    if args.out:
        from fedhq_sim.files import atomic_write_text

        atomic_write_text(args.out, table.to_csv(index=False))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    import os

    jobs = args.jobs if args.jobs is not None else os.cpu_count() or 1
    if jobs < 1:
        raise InputError("command line", "--jobs", f"must be at least 1, got {jobs}")
    return jobs


def _check_batch_arguments(args: argparse.Namespace) -> list[int]:
    if not 0 < args.target <= 1:
        raise InputError("command line", "--target", f"expected a fraction in (0, 1], got {args.target}")
    seeds = list(dict.fromkeys(args.seeds))
    if any(seed < 0 for seed in seeds):
        raise InputError("command line", "--seeds", "seeds must be non-negative")
    return seeds


def _execute_batch(args: argparse.Namespace, kind: str, variants: list, by: list[str]) -> int:
    """The library's batch into a folder, its progress printed."""
    from fedhq_sim.batch_runner import BatchSettings, run_batch_into_folder

    _check_engine(args)
    settings = BatchSettings(
        kind, by, args.target, _jobs(args), args.timing_only, args.engine, args.address, tuple(args.set or ())
    )
    say = (lambda _text: None) if args.quiet else (lambda text: print(text, flush=True))
    run_batch_into_folder(variants, settings, args.out, overwrite=args.overwrite, say=say)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fedhq_sim.batch import Variant
    from fedhq_sim.compare import DEFAULT_POLICIES, TIMING_ONLY_POLICIES, policy_variants
    from fedhq_sim.overrides import parse_assignment

    seeds = _check_batch_arguments(args)
    common = {}
    for text in args.set or []:
        key, values = parse_assignment(text)
        if len(values) != 1:
            raise InputError("command line", "--set", f"compare takes one value per key ({key}); sweep takes several")
        common[key] = values[0]
    scenarios = list(dict.fromkeys(args.scenarios))
    defaults = TIMING_ONLY_POLICIES if args.timing_only else DEFAULT_POLICIES
    policies = list(dict.fromkeys(args.policies or ([] if len(scenarios) > 1 else defaults)))
    variants = []
    for scenario in scenarios:
        if policies:
            for variant in policy_variants(scenario, policies, seeds, common):
                label = ({"scenario": scenario.stem} if len(scenarios) > 1 else {}) | dict(variant.label)
                variants.append(Variant(scenario, label, variant.seed, variant.overrides))
        else:
            variants += [Variant(scenario, {"scenario": scenario.stem}, s, common) for s in seeds]
    by = list(variants[0].label)
    return _execute_batch(args, "compare", variants, by)


def _sweep(args: argparse.Namespace) -> int:
    from fedhq_sim.overrides import parse_assignment
    from fedhq_sim.sweep import grid_variants

    seeds = _check_batch_arguments(args)
    axes = [parse_assignment(text) for text in args.set]
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise InputError("command line", "--set", "each key may be swept once")
    if "seed" in keys:
        raise InputError("command line", "--set", "sweep seeds with --seeds, not --set seed=...")
    return _execute_batch(args, "sweep", grid_variants(args.scenario, axes, seeds), keys)


def _report(args: argparse.Namespace) -> int:
    from fedhq_sim.report import write_report

    if not args.folder.is_dir():
        raise InputError(args.folder, "", "no such results folder")
    print(f"report written to {write_report(args.folder)}")
    return 0


def _power_arguments(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """``--power-idle``/``--power-active`` in watts: both or neither, positive, idle <= active."""
    from fedhq_sim.units import parse_power_w

    watts = []
    for flag, text in (("--power-idle", args.power_idle), ("--power-active", args.power_active)):
        try:
            value = None if text is None else parse_power_w(text)
        except ValueError as error:
            raise InputError("command line", flag, str(error)) from None
        if value is not None and value <= 0:
            raise InputError("command line", flag, f"must be greater than zero, got {text!r}")
        watts.append(value)
    idle, active = watts
    if (idle is None) != (active is None):
        raise InputError("command line", "--power-idle/--power-active", "give both or neither")
    if idle is not None and active is not None and active < idle:
        raise InputError("command line", "--power-active", f"must not be below --power-idle ({idle} W), got {active} W")
    return idle, active


def _profile_device(args: argparse.Namespace) -> int:
    import re

    import torch
    import yaml

    from fedhq_sim.files import atomic_write_text
    from fedhq_sim.probe import ProbeSettings, parse_measured, probe_device
    from fedhq_sim.scenario import SAFE_NAME

    name = args.out.stem if args.out else "this_host"
    if not re.match(SAFE_NAME, name):
        raise InputError(args.out, "--out", f"the file stem '{name}' is the profile name: use letters, digits, _ . -")
    if args.out and not args.out.parent.is_dir():
        raise InputError(args.out, "--out", f"the folder {args.out.parent} does not exist")
    if args.out and args.out.is_dir():
        raise InputError(args.out, "--out", "is a folder; give the profile's file name, e.g. my_gateway.yaml")
    if args.out and args.out.exists() and not args.overwrite:
        raise InputError(args.out, "--out", "exists; pass --overwrite to replace it")
    for flag, value in (("--threads", args.threads), ("--repeats", args.repeats), ("--passes", args.passes)):
        if value is not None and value < 1:
            raise InputError("command line", flag, f"must be at least 1, got {value}")
    idle, active = _power_arguments(args)
    if idle is None:
        print(
            "warning: no --power-idle/--power-active given; the profile's power is a marked placeholder",
            file=sys.stderr,
        )
    settings = ProbeSettings(name, args.threads or torch.get_num_threads(), args.repeats, idle, active, args.passes)
    print(f"measuring this machine with {settings.threads} thread(s), {settings.passes} pass(es)...", file=sys.stderr)
    mapping = probe_device(settings)
    parse_measured(mapping)  # it must load like any library profile
    text = yaml.safe_dump(mapping, sort_keys=False, width=120, allow_unicode=True)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"device profile written to {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


class RunInterruptedError(Exception):
    """A run stopped by SIGINT or SIGTERM, with what was saved: exit 130 or 143."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m fedhq_sim``."""
    args = _parser().parse_args(argv)
    handlers = {
        "run": _run,
        "validate": _validate,
        "analyze": _analyze,
        "compare": _compare,
        "sweep": _sweep,
        "report": _report,
        "profile-device": _profile_device,
    }
    try:
        with stop_signals():
            return handlers[args.command](args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SimulationError as error:
        print(f"error: the simulation stopped: {error}; completed rounds are saved", file=sys.stderr)
        return 1
    except RunInterruptedError as stop:
        print(f"interrupted: {stop.message}", file=sys.stderr)
        return stop.code
    except (KeyboardInterrupt, Terminated) as stop:
        print("interrupted; completed results are saved", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
