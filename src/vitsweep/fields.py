"""Config fields checked against what consumes them, before anything runs.

Every config node is read by one function or class: the model by ``VisionTransformer``, an
attention knob by its attention class, ``trainer`` by ``TrainerSettings``, ``data`` by
``DataSettings``, ``optim`` by the optimizer. That signature is the field's declaration: a key it
does not take is unknown, and a value its annotation does not admit has the wrong type. Ranges
are checked by the constructors themselves (``vitsweep.errors.require``), so a new part declares
and checks its own settings and nothing here names one. A part whose setting was renamed says so
in a ``RENAMED = {"old": "new"}`` class attribute, so the old key names the new one.
"""

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vitsweep.errors import ConfigError


def _parameters(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return {
        name: p
        for name, p in inspect.signature(target).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # unresolvable annotations (some libraries'): check names only
        return {}


def fits(value: Any, hint: Any) -> bool:
    """Whether a config value (plain YAML data) is admitted by a type annotation."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    sequence = origin in (list, tuple, Sequence) or hint in (list, tuple)
    if sequence:
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(fits, value, args))
        return not args or all(fits(item, args[0]) for item in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    if inspect.isclass(hint):
        return isinstance(value, hint)
    return True  # Callable and other abstract hints: nothing to check in plain data


def describe(hint: Any) -> str:
    """An annotation in words, for the error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is typing.Literal:
        return " or ".join(map(str, args))
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        return "a group of settings"
    if origin in (list, tuple, Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} (each {describe(args[0])})"
        return f"a list (each {describe(args[0])})" if args else "a list"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        type(None): "null",
        None: "null",
    }
    if hint in names:
        return names[hint]
    return "a tensor" if getattr(hint, "__name__", "") == "Tensor" else str(hint)


def check_fields(
    path: str,
    target: Callable[..., Any],
    values: Mapping[str, Any],
    supplied: Iterable[str] = (),
) -> None:
    """Every key of ``values`` (but Hydra's ``_target_``-style keys) is a parameter of
    ``target`` that its annotation admits; every parameter without a default is given.
    ``supplied``: parameters the code passes itself, which the config must not set."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}={values!r}: expected a group of settings (key: value)")
    params = _parameters(target)
    hints = _hints(target)
    supplied = set(supplied)
    settable = [name for name in params if name not in supplied and name != "self"]
    prefix = f"{path}." if path else ""
    name = getattr(target, "__qualname__", str(target))
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key in supplied:
            raise ConfigError(
                f"{prefix}{key} is not set in the config: the code that builds this part passes it"
            )
        if key not in settable:
            if new := getattr(target, "RENAMED", {}).get(key):
                raise ConfigError(f"{prefix}{key} was renamed to {prefix}{new}")
            known = ", ".join(settable) or "none"
            raise ConfigError(f"{prefix}{key} is not a setting of {name} (its settings: {known})")
        hint = hints.get(key, params[key].annotation)
        if not fits(value, hint):
            raise ConfigError(f"{prefix}{key}={value!r}: expected {describe(hint)}")
    for key in settable:
        if key not in values and params[key].default is inspect.Parameter.empty:
            raise ConfigError(f"{prefix}{key} is required by {name} but not set")
