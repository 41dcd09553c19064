"""The ``labelsmooth`` command: a registry of subcommands, each imported only when it runs.

Every subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
status). ``labelsmooth --help`` and ``--version`` work without the lab's extras; a subcommand
run without them says in one line which extra to install. A mistyped command or option is one
line on stderr with a suggestion, exit status 2 (options are never abbreviated: ``--epoch`` is
not ``--epochs``). Ctrl-C prints one line, with how to resume where that applies, exit status 130.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from typing import NoReturn

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("labelsmooth.lab.sweep", "train a grid of eps x seed (x distribution, model) cells at once"),
    "reproduce": ("labelsmooth.lab.presets",
                  "run a named experiment: a published claim on real data (the list: reproduce --help)"),
    "report": ("labelsmooth.lab.report.builder", "rebuild the plots and report.html of a run directory"),
    "demo": ("labelsmooth.lab.demo", "the Fashion-MNIST experiment, quick (digits if absent), with its report"),
    "merge": ("labelsmooth.lab.merge", "combine the run directories of a sharded sweep into one"),
    "calibrate": ("labelsmooth.lab.calibrate", "score and fix the calibration of saved logits (.npz)"),
    "distill": ("labelsmooth.lab.distill", "do smoothed teachers distil worse? (Müller et al. 2019)"),
}

# Commands that save their progress in a run directory; an interrupted one resumes when rerun.
RESUMABLE = frozenset({"sweep", "reproduce", "demo", "distill"})
# The lab's imports (import name -> distribution), installed by the extra "lab".
LAB_EXTRA = {"numpy": "numpy", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class UsageError(Exception):
    """A command line that does not parse (raised instead of exiting while probing)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` without prefix matching, whose errors are one line with a suggestion.

    >>> parser = ArgumentParser(prog="demo")
    >>> _ = parser.add_argument("--epochs", type=int)
    >>> parser.probing = True  # raise UsageError instead of exiting
    >>> try:
    ...     parser.parse_args(["--epoch", "2"])
    ... except UsageError as error:
    ...     print(error)
    demo: error: unrecognized arguments: --epoch 2 (did you mean --epochs?)
    """

    probing = False

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def suggestion(self, message: str) -> str:
        """' (did you mean X?)' for the first unknown option or invalid choice in ``message``."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            word, candidates = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
        else:
            unknown = re.search(r"unrecognized arguments: (\S+)", message)
            if not unknown:
                return ""
            word, candidates = unknown.group(1), [s for a in self._actions for s in a.option_strings]
        close = difflib.get_close_matches(word, candidates, n=1)
        return f" (did you mean {close[0]}?)" if close else ""

    def error(self, message: str) -> NoReturn:
        line = f"{self.prog}: error: {message}{self.suggestion(message)}"
        if self.probing:
            raise UsageError(line)
        print(line, file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def version() -> str:
    """The installed package's version (``labelsmooth.__version__`` when run from a source tree)."""
    try:
        return importlib.metadata.version("labelsmooth")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _top_level_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="labelsmooth",
        description="Label smoothing done right and fast, and a lab that shows whether it helps.",
        epilog="commands:\n" + "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\nRun 'labelsmooth COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"labelsmooth {version()}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def missing_lab_packages() -> list[str]:
    """The lab's packages (as pip names them) that cannot be imported here."""
    return [pip for name, pip in LAB_EXTRA.items() if importlib.util.find_spec(name) is None]


def command_parser(name: str, module, *, add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser(prog=f"labelsmooth {name}", description=COMMANDS[name][1], add_help=add_help)
    module.add_arguments(parser)
    return parser


def reproduce_alias(rest: list[str], module) -> str | None:
    """NAME of ``labelsmooth reproduce REST`` when it names another command (the reproduce module's
    ``OTHER_COMMANDS``, e.g. ``distillation`` for ``distill``), else None.

    NAME is found as the reproduce command's own parser finds it, wherever it stands among the
    options (``reproduce --quick distillation``); the other command's options need not be reproduce's.
    """
    if not set(rest) & set(module.OTHER_COMMANDS):
        return None
    probe = command_parser("reproduce", module, add_help=False)  # --help is the command's, not the probe's
    probe.probing = True
    try:
        preset = probe.parse_known_args(rest)[0].preset
    except (UsageError, argparse.ArgumentError):
        return None
    return preset if preset in module.OTHER_COMMANDS else None


def _interrupted(name: str, args: argparse.Namespace | None) -> int:
    out = getattr(args, "out", None)
    if name in RESUMABLE and out is not None:
        again = "the same command" if getattr(args, "out_given", True) else f"the same command with --out {out}"
        print(f"\nInterrupted; finished epochs are saved in {out}. Run {again} to resume.", file=sys.stderr)
    else:
        print("\nInterrupted.", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_level_parser().parse_args(argv[:1] or ["--help"])
    name, rest = argv[0], argv[1:]
    missing = missing_lab_packages()
    if missing:
        print(f"labelsmooth {name}: error: the lab needs {', '.join(missing)}, not installed here; install "
              f'the lab\'s extras with: pip install "labelsmooth[lab]"', file=sys.stderr)
        return EXIT_USAGE
    args = None
    try:
        module = importlib.import_module(COMMANDS[name][0])
        alias = reproduce_alias(rest, module) if name == "reproduce" else None
        if alias is not None:  # `reproduce distillation ARGS` is `distill ARGS`, NAME anywhere in ARGS
            name = module.OTHER_COMMANDS[alias][0]
            module = importlib.import_module(COMMANDS[name][0])
            parser = command_parser(name, module)
            parser.add_argument("preset", choices=[alias], help=argparse.SUPPRESS)
        else:
            parser = command_parser(name, module)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return _interrupted(name, args)


if __name__ == "__main__":
    raise SystemExit(main())
