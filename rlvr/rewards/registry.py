"""Reward functions by name, so a YAML config can say `rewards: [gsm8k, numeric_proximity]`.

A spec is one of:
- a built-in name (`correctness`, `int`, `strict_format`, `soft_format`, `xml_count`,
  `numeric_proximity`, `math_verify`) or a set name (`gsm8k`, the five §9 rewards);
- `"package.module:function"`, imported from the Python path;
- `"path/to/file.py:function"`, a file imported by path (relative paths from the working directory);
- a callable, passed through unchanged.
Built-ins are built with the run's tag names; a user's own function is used as it is.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import rlvr.rewards.code as code_rewards
import rlvr.rewards.gsm8k as gsm8k
import rlvr.rewards.math as math_rewards
from rlvr.errors import RlvrError, nearest
from rlvr.rewards.text import RewardFunc, check_tag, describe_error

# name -> builder(reasoning_tag, answer_tag)
_BUILTINS: dict[str, Callable[[str, str], RewardFunc]] = {
    "correctness": lambda r, a: gsm8k.make_correctness_reward(a),
    "int": lambda r, a: gsm8k.make_int_reward(a),
    "strict_format": gsm8k.make_strict_format_reward,
    "soft_format": gsm8k.make_soft_format_reward,
    "xml_count": gsm8k.make_xml_count_reward,
    "numeric_proximity": lambda r, a: math_rewards.make_numeric_proximity_reward(a),
    "math_verify": lambda r, a: math_rewards.make_math_verify_reward(a),
    "code": lambda r, a: code_rewards.make_code_reward(),
}

_SETS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("correctness", "int", "strict_format", "soft_format", "xml_count"),
}

_FORMS = "'package.module:function' or 'path/to/file.py:function'"


def available_rewards() -> list[str]:
    """Every name `resolve_rewards` accepts: single rewards, then sets."""
    return [*_BUILTINS, *_SETS]


def resolve_rewards(
    specs: Sequence[str | Callable[..., Any]],
    reasoning_tag: str = "reasoning",
    answer_tag: str = "answer",
) -> list[RewardFunc]:
    """Turn reward specs (names, set names, import strings, callables) into reward functions.

    >>> [f.__name__ for f in resolve_rewards(["gsm8k", "numeric_proximity"])]
    ['correctness', 'int', 'strict_format', 'soft_format', 'xml_count', 'numeric_proximity']
    """
    if isinstance(specs, (str, bytes)) or callable(specs):
        specs = [specs]  # a YAML scalar instead of a list
    if not specs:
        raise RlvrError(f"rewards is empty: name at least one, e.g. [gsm8k], a built-in name or {_FORMS}")
    check_tag(reasoning_tag, "reasoning_tag")
    check_tag(answer_tag, "answer_tag")
    funcs: list[RewardFunc] = []
    for spec in specs:
        funcs.extend(_resolve_one(spec, reasoning_tag, answer_tag))
    return funcs


def _resolve_one(spec: Any, reasoning_tag: str, answer_tag: str) -> list[RewardFunc]:
    if callable(spec):
        return [spec]
    if not isinstance(spec, str):
        raise RlvrError(f"reward {spec!r} is a {type(spec).__name__}: give a built-in name, {_FORMS}, or a callable")
    name = spec.strip()
    if name in _SETS:
        return [_BUILTINS[n](reasoning_tag, answer_tag) for n in _SETS[name]]
    if name in _BUILTINS:
        return [_BUILTINS[name](reasoning_tag, answer_tag)]
    if ":" in name:
        return [_import_function(name)]
    known = available_rewards()
    raise RlvrError(
        f"unknown reward '{name}'{nearest(name, known)}: use one of {', '.join(known)} or your own as {_FORMS}"
    )


def _import_function(spec: str) -> RewardFunc:
    # rpartition: a Windows path ("C:\\r.py:fn") has a colon of its own before the last one.
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise RlvrError(f"reward '{spec}' is not of the form {_FORMS}")
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    module = _import_file(where, spec) if is_file else _import_module(where, spec)
    return _get_callable(module, attr, spec)


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        hint = "check the module name and that its package is installed or on PYTHONPATH"
        if e.name != name:  # the module exists but one of its own imports is missing
            hint = f"install the package '{e.name}' that it imports"
        raise RlvrError(f"reward '{spec}': cannot import module '{name}' ({e}); {hint}") from e
    except Exception as e:
        raise RlvrError(
            f"reward '{spec}': importing module '{name}' raised {describe_error(e)}; fix that module"
        ) from e


def _import_file(path_text: str, spec: str) -> ModuleType:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise RlvrError(
            f"reward '{spec}': file '{path_text}' not found (looked at {path}); "
            "give a path relative to the working directory or an absolute one"
        )
    # One module per file, named after its full path, so importing the same file twice (two
    # functions from it) shares globals, and two files called rewards.py do not collide.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"rlvr_user_rewards_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RlvrError(f"reward '{spec}': '{path_text}' cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(loader_spec)
    # Registered before running so dataclasses, pickling and self-imports inside the file work.
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise RlvrError(f"reward '{spec}': importing '{path_text}' raised {describe_error(e)}; fix that file") from e
    return module


def _get_callable(module: ModuleType, attr: str, spec: str) -> RewardFunc:
    obj: Any = module
    for part in attr.split("."):  # "Class.method" and "obj.attr" work too
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise RlvrError(
                f"reward '{spec}': '{getattr(module, '__file__', module.__name__)}' has no '{attr}'"
                f"{nearest(part, names)}; check the function name after the colon"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise RlvrError(
            f"reward '{spec}': '{attr}' is a {type(obj).__name__}, not a function; "
            "point at fn(prompts, completions, **columns)"
        )
    return obj
