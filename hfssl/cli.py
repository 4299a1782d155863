"""Command-line parsing shared by every recipe.

Configs are dataclasses parsed with ``transformers.HfArgumentParser`` so the flags are the
ones Hugging Face users know; a single ``.json``/``.yaml`` argument works too. Mistakes end
in one line on stderr (exit 2), not a usage dump or a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from transformers import HfArgumentParser

from hfssl.errors import HfsslError

T = TypeVar("T")


class OneLineArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are a single line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (run with --help for all flags)\n")
        sys.exit(2)


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``args`` (default: ``sys.argv[1:]``) into instances of ``dataclass_types``.

    A lone ``config.json``/``config.yaml`` argument is read as the whole configuration.
    """
    parser = OneLineArgumentParser(list(dataclass_types))
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
            path = os.path.abspath(argv[0])
            if not os.path.isfile(path):
                parser.error(f"config file {argv[0]!r} does not exist")
            if path.endswith(".json"):
                return tuple(parser.parse_json_file(path, allow_extra_keys=False))
            return tuple(parser.parse_yaml_file(path, allow_extra_keys=False))
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except (ValueError, TypeError) as exc:
        # __post_init__ validation and unknown keys in config files land here.
        parser.error(str(exc).strip().splitlines()[0])


def main_entry(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a recipe's ``main`` so user errors print one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except HfsslError as exc:
            prog = os.path.basename(sys.argv[0]) or "hfssl"
            sys.stderr.write(f"{prog}: error: {exc}\n")
            sys.exit(1)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: resume with --resume_from_checkpoint latest\n")
            sys.exit(130)

    return wrapper
