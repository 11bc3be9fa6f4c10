"""``python -m d2pruner.eval.sweep``: an lmms-eval ``--config`` file for methods × keep ratios, run in ONE launch.

lmms-eval's ``--config`` takes a list of run configurations and runs them one after the other in the same
processes (imports and process start-up paid once). Each configuration gets its own output folder
(``<output-path>/<method>[-<ratio>]``): lmms-eval names result files by the second they are written, so two
runs sharing a folder could overwrite each other. The task folder is always on ``include_path``.

Example (the offline test's sweep, written to ``sweep.yaml``)::

    python -m d2pruner.eval.sweep --pretrained tiny-llava --methods none,fastv,dart,divprune,mmr,d2pruner,d2pruner-di \\
        --keep-ratios 0.25 --model-args layer=2,preset=localization,max_new_tokens=4 \\
        --tasks d2pruner_examples_bbox_rec --output-path out --out sweep.yaml
    accelerate launch ... -m lmms_eval --config sweep.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from d2pruner.eval import TASKS_DIR
from d2pruner.eval.settings import UNPRUNED, parse_model_args


def _ratio_name(ratio: float) -> str:
    return f"{ratio:g}"


def sweep_config(
    pretrained: str,
    methods: Sequence[str],
    keep_ratios: Sequence[float],
    tasks: str,
    output_path: str | Path,
    model_args: str = "",
    log_samples: bool = True,
) -> list[dict]:
    """The configurations: the unpruned model once (``method=none``), every other method at every keep ratio.

    Arguments:
        pretrained: as in ``--model_args pretrained=…``.
        methods: ``none`` and/or ``d2pruner.METHODS`` names.
        keep_ratios: the budgets of the pruned runs.
        tasks: lmms-eval ``--tasks`` (comma-separated).
        output_path: the parent of every run's output folder.
        model_args: more ``key=value`` model args for every run (``layer=5,preset=localization``).
    Raises:
        ValueError: a bad method, ratio or model arg (checked like the plugin does), or nothing to run.
    """
    if not methods:
        raise ValueError("methods is empty")
    if any(m != UNPRUNED for m in methods) and not keep_ratios:
        raise ValueError("keep_ratios is empty but a method prunes")
    extra = [p for p in model_args.split(",") if p.strip()]
    configs = []
    for method in methods:
        budgets = [None] if method == UNPRUNED else list(keep_ratios)
        for ratio in budgets:
            args = [f"pretrained={pretrained}", f"method={method}"]
            if ratio is not None:
                args.append(f"keep_ratio={_ratio_name(ratio)}")
            args += extra
            _check(args)
            folder = method if ratio is None else f"{method}-{_ratio_name(ratio)}"
            configs.append({
                "model": "d2pruner",
                "model_args": ",".join(args),
                "tasks": tasks,
                "include_path": str(TASKS_DIR),
                "output_path": str(Path(output_path) / folder),
                "log_samples": log_samples,
            })
    return configs


def _check(args: list[str]) -> None:
    """Validate one run's model args as the plugin will (values converted the way lmms-eval converts them)."""
    parsed = {}
    for piece in args:
        if "=" not in piece:
            raise ValueError(f"model_args must be key=value pairs; got {piece!r}")
        key, value = piece.split("=", 1)
        parsed[key] = _convert(value)
    parse_model_args(parsed)


def _convert(value: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.isnumeric():
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--keep-ratios must be numbers in (0, 1], got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    import yaml

    parser = argparse.ArgumentParser(prog="python -m d2pruner.eval.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="hub id, local folder or tiny-* name")
    parser.add_argument("--methods", required=True, help="comma-separated: none, fastv, dart, divprune, mmr, d2pruner…")
    parser.add_argument("--keep-ratios", default="", help="comma-separated keep ratios of the pruned runs")
    parser.add_argument("--tasks", required=True, help="lmms-eval --tasks")
    parser.add_argument("--output-path", required=True, help="parent folder of every run's --output_path")
    parser.add_argument("--model-args", default="", help="more model args for every run, e.g. preset=localization")
    parser.add_argument("--out", help="write the config here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        ratios = [_ratio(r) for r in args.keep_ratios.split(",") if r.strip()]
        configs = sweep_config(args.pretrained, [m.strip() for m in args.methods.split(",") if m.strip()], ratios,
                               args.tasks, args.output_path, args.model_args)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    text = yaml.safe_dump(configs, sort_keys=False)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
