"""Command-line parsing shared by every recipe.

Configs are dataclasses parsed with ``transformers.HfArgumentParser`` so the flags are the
ones Hugging Face users know. A ``.json``/``.yaml`` config file may come first; flags after it
override its values (``recipe.py config.yaml --max_steps 5``). Mistakes end in one line on stderr
(exit 2), not a usage dump or a traceback.

This module stays light (no torch, datasets or accelerate): recipes parse their arguments before
importing anything heavy, so ``--help`` and a mistyped flag answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar, Union

from transformers import HfArgumentParser

from hfssl.errors import HfsslError

T = TypeVar("T")

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
_EPILOG = ("A .json or .yaml config file may come first, keys named as the flags: "
           "'%(prog)s config.yaml --max_steps 5' takes config.yaml's values, then the flags after it.")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class OneLineArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are a single line, and whose ``--no_<flag>`` complements of
    boolean flags that default to True say what they do (transformers gives them the flag's own help)."""

    def __init__(self, dataclass_types: Sequence[type], **kwargs: Any) -> None:
        kwargs.setdefault("epilog", _EPILOG)
        super().__init__(list(dataclass_types), **kwargs)
        for action in self._actions:
            if isinstance(action, argparse._StoreFalseAction) and action.option_strings[0] == f"--no_{action.dest}":
                action.help = f"Turn off --{action.dest} (on by default)."
                action.default = argparse.SUPPRESS  # the flag's own default is the one that counts

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (run with --help for all flags)\n")
        sys.exit(2)


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``args`` (default: ``sys.argv[1:]``) into instances of ``dataclass_types``.

    A first argument ending in .json/.yaml/.yml is a config file: its keys are flag names (a string
    where a list is expected is a one-element list), and flags after it override it. A run's
    ``run_config.json`` works too (its resolved flags).
    """
    parser = OneLineArgumentParser(dataclass_types)
    argv = list(sys.argv[1:] if args is None else args)
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_SUFFIXES):
        apply_config_file(parser, argv.pop(0), dataclass_types)
    try:
        *outputs, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        # __post_init__ validation lands here.
        parser.error(str(exc).strip().splitlines()[0])
    if remaining:
        parser.error(_unrecognized(remaining, _flag_names(dataclass_types)))
    return tuple(outputs)


def _flag_names(dataclass_types: Sequence[type]) -> list[str]:
    return [f.name for dtype in dataclass_types for f in dataclasses.fields(dtype) if f.init]


def _unrecognized(remaining: list[str], names: list[str]) -> str:
    message = f"unrecognized arguments: {' '.join(remaining)}"
    first = remaining[0]
    if first.startswith("-"):
        close = difflib.get_close_matches(first.lstrip("-").split("=")[0].replace("-", "_"), names, n=1)
        if close:
            message += f" (did you mean --{close[0]}?)"
    elif first.lower().endswith(CONFIG_SUFFIXES):
        message += " (a config file must be the first argument)"
    return message


def apply_config_file(parser: OneLineArgumentParser, path: str, dataclass_types: Sequence[type]) -> None:
    """Make the values of config file ``path`` the parser's defaults, so flags given after it win."""
    config = _read_config(parser, path)
    annotations: dict[str, Any] = {}
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        annotations.update({f.name: hints[f.name] for f in dataclasses.fields(dtype) if f.init})
    defaults = {}
    for raw_key, value in config.items():
        key = str(raw_key).lstrip("-").replace("-", "_")
        if key not in annotations:
            close = difflib.get_close_matches(key, list(annotations), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parser.error(f"config file {path}: unknown key {raw_key!r}{hint}")
        try:
            defaults[key] = _coerce(key, value, annotations[key])
        except ValueError as exc:
            parser.error(f"config file {path}: {exc}")
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False  # given by the file


def _read_config(parser: OneLineArgumentParser, path: str) -> dict:
    if not os.path.isfile(path):
        parser.error(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            if path.lower().endswith(".json"):
                config = json.load(fh)
            else:
                import yaml

                config = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        parser.error(f"cannot read config file {path}: {str(exc).splitlines()[0]}")
    except Exception as exc:  # yaml.YAMLError: its first line says what, its mark where
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        parser.error(f"cannot read config file {path}{where}: {problem}")
    if config is None:
        return {}
    if not isinstance(config, dict):
        parser.error(f"config file {path} must hold flag names and values (a mapping), not a {type(config).__name__}")
    if isinstance(config.get("config"), dict) and "versions" in config:
        return config["config"]  # a run's run_config.json: rerun with its resolved flags
    return config


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """``value`` of config key ``key`` as the field's type; ValueError says what was expected."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(key, value, options[0]) if len(options) == 1 else value
    if origin is list:
        # run_clm-style configs often give one file as a string: a one-element list, not its characters.
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(key, item, args[0] if args else Any) for item in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if annotation is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if annotation is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if annotation in (int, float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list)):
            return json.dumps(value)  # e.g. lr_scheduler_kwargs written as a mapping
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _report_to_launcher(line: str) -> None:
    """Under torchrun (and ``accelerate launch`` with several processes) the launcher ends with a failure
    summary whose "Root Cause" reads the worker's error file; without one it says only "To enable traceback
    see ...". Writing the one-line error there makes the summary name the actual cause."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    import json
    import time

    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"message": line, "timestamp": int(time.time())}, fh)
    except OSError:
        pass


def main_entry(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a recipe's ``main`` so user errors print one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except HfsslError as exc:
            prog = os.path.basename(sys.argv[0]) or "hfssl"
            line = f"{prog}: error: {exc}"
            sys.stderr.write(line + "\n")
            _report_to_launcher(line)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: resume with --resume_from_checkpoint latest\n")
            sys.exit(130)

    return wrapper
