"""Inspect a prior file: ``python -m d2pruner.priors show FILE`` (metadata and a summary of each map).

Calibrating one needs a model: ``python -m d2pruner.calibrate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m d2pruner.priors", description="Inspect positional-bias priors.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print a prior file's metadata and summary")
    show.add_argument("path")
    return parser.parse_args(argv)


def run_show(args: argparse.Namespace) -> None:
    from d2pruner.priors import load_prior

    prior = load_prior(args.path)
    print(prior.describe())
    print(json.dumps({"prompt": prior.prompt, **prior.info}, indent=2, default=str))
    for role, values in prior.maps.items():
        rows = values.sum(dim=1)
        print(
            f"{role}: {tuple(values.shape)}, sum {float(values.sum()):.4g}, bottom/top row mass ratio "
            f"{float(rows[-1] / rows[0]) if rows[0] > 0 else float('inf'):.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_show(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
