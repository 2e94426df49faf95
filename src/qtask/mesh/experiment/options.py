"""The experiment's options and command line (light: imports nothing heavy, so `qtask --help`
stays fast)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

FAULT_KINDS = ("latency", "degrade", "stop", "kill")


@dataclass(frozen=True)
class Options:
    """One experiment: sizes, seed, faults and where the report goes."""

    out: Path = Path("experiment-report")
    seed: int = 7
    nodes: int = 3
    shots: int = 1000
    repeats: int = 2
    faults: tuple[str, ...] = FAULT_KINDS
    smoke: bool = False
    # Both modes give up on a node after this long (the coordinator's `execute_timeout_s`).
    execute_timeout_s: float = 5.0
    # Attempts per job in both modes (the coordinator's `max_attempts`).
    max_attempts: int = 3
    noises: tuple[dict[str, float], ...] = field(default=())
    # Where the processes' settings and logs go (default: a temporary directory, removed).
    work: Path | None = None

    def node_noises(self) -> list[dict[str, float]]:
        """Node i's noise: better for lower i, so node 0 is the one both modes pick first."""
        if self.noises:
            return [dict(n) for n in self.noises]
        return [
            {"depolarizing_1q": 0.001 * (1 + 2 * i), "depolarizing_2q": 0.01 * (1 + 2 * i),
             "readout": 0.005 * (1 + i)}
            for i in range(self.nodes)
        ]  # fmt: skip


def smoke(out: Path, seed: int = 7) -> Options:
    """The size CI runs: 2 nodes, the 3 smoke circuits twice, a latency spike then a node drop."""
    return Options(
        out=out, seed=seed, nodes=2, shots=500, repeats=2, faults=("latency", "kill"), smoke=True
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`qtask experiment`'s options."""
    parser.add_argument("--out", type=Path, default=Path("experiment-report"),
                        help="the report folder (default ./experiment-report)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="plan and fault schedule seed")
    parser.add_argument("--nodes", type=int, default=3, help="service nodes (default 3)")
    parser.add_argument("--shots", type=int, default=1000, help="shots per circuit")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each circuit per mode")
    parser.add_argument(
        "--faults", default=",".join(FAULT_KINDS),
        help=f"fault kinds for the fault scenario, in order ({','.join(FAULT_KINDS)}; 'none')",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="the CI size (a minute or two)")
    parser.add_argument(
        "--work", type=Path, help="keep the processes' settings and logs here (default: removed)"
    )


def from_args(args: argparse.Namespace) -> Options:
    """Options from `add_arguments`' namespace."""
    if args.smoke:
        return replace(smoke(args.out, args.seed), work=args.work)
    kinds = () if args.faults in ("", "none") else tuple(k.strip() for k in args.faults.split(","))
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    return Options(out=args.out, seed=args.seed, nodes=args.nodes, shots=args.shots,
                   repeats=args.repeats, faults=kinds, work=args.work)  # fmt: skip
