"""The ``labelsmooth`` command: a registry of subcommands, each imported only when it runs.

Every subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
status). ``labelsmooth --help`` lists the registry without importing the lab.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("labelsmooth.lab.sweep", "train a grid of eps x seed (x distribution, model) cells at once"),
    "reproduce": ("labelsmooth.lab.presets",
                  "run a named experiment (seed-fashion-mnist, overfitting, distillation) [--quick]"),
    "report": ("labelsmooth.lab.report.builder", "rebuild the plots and report.html of a run directory"),
    "demo": ("labelsmooth.lab.demo", "the Fashion-MNIST experiment, quick (digits if absent), with its report"),
    "merge": ("labelsmooth.lab.merge", "combine the run directories of a sharded sweep into one"),
    "calibrate": ("labelsmooth.lab.calibrate", "score and fix the calibration of saved logits (.npz)"),
    "distill": ("labelsmooth.lab.distill", "do smoothed teachers distil worse? (Müller et al. 2019)"),
}

# Experiments that are more than one sweep, reachable as `labelsmooth reproduce NAME` too.
REPRODUCE_ALIASES = {"distillation": "distill"}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelsmooth",
        description="Label smoothing done right and fast, and a lab that shows whether it helps.",
        epilog="commands:\n" + "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\nRun 'labelsmooth COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"] and argv[1:2] and argv[1] in REPRODUCE_ALIASES:
        argv = [REPRODUCE_ALIASES[argv[1]], *argv[2:]]
    if not argv or argv[0] not in COMMANDS:
        _top_level_parser().parse_args(argv[:1] or ["--help"])
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"labelsmooth {name}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
