"""`python -m qtask.mesh.experiment` (the same as `qtask experiment`)."""

from __future__ import annotations

import argparse
import sys

from qtask.mesh.experiment.options import add_arguments, from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtask experiment", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the experiment the parsed options describe; print where the report is."""
    from qtask import logs
    from qtask.mesh.experiment.harness import make_plan, run_experiment

    # The harness's own libp2p host logs like a qtask process; only what goes wrong matters here
    # (the processes it starts log to their files in the work directory).
    logs.configure("WARNING", json_output=False)

    try:
        options = from_args(args)
        make_plan(options)  # e.g. too few jobs for the faults asked for
    except ValueError as exc:
        print(f"qtask: {exc}", file=sys.stderr)
        return 2
    out = run_experiment(options)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
