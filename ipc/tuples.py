"""``NamedTuple`` for modules written with ``from __future__ import annotations``,
without the start-up cost of typing's.

``typing.NamedTuple`` checks each field's annotation: a string (every annotation, under
that import) becomes a ForwardRef, which compiles it, and the first ``compile()`` of a
process sets up the interpreter's AST types. The library's 21 named tuples compiled 65
annotations at every start of a process, for nothing read at run time. This base
builds the same class as typing's (``collections.namedtuple``, the defaults, then the
class body's docstring and methods), the annotations kept as written. Type checkers
see ``typing.NamedTuple``; Python 3.14, whose annotations are evaluated lazily, gets
typing's too."""

from __future__ import annotations

import sys

# What a class body may not set, and what it sets that is not copied (typing's lists).
_PROHIBITED = frozenset(
    {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults"}
    | {"_make", "_replace", "_asdict", "_source"}
)
_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any


class _NamedTupleMeta(type):
    def __new__(mcs, typename: str, bases: tuple[type, ...], ns: dict[str, Any]) -> Any:
        import collections

        if bases != (NamedTuple,):
            raise TypeError("can only inherit from a NamedTuple type")
        annotations: dict[str, Any] = ns.get("__annotations__", {})
        defaults = []
        for name in annotations:
            if name in ns:
                defaults.append(ns[name])
            elif defaults:
                raise TypeError(f"Non-default namedtuple field {name} cannot follow default")
        module = ns["__module__"]
        make = collections.namedtuple
        cls = make(typename, list(annotations), defaults=defaults, module=module)
        cls.__annotations__ = cls.__new__.__annotations__ = dict(annotations)
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
            if key not in _SPECIAL and key not in annotations:
                setattr(cls, key, value)
        return cls


if TYPE_CHECKING or sys.version_info >= (3, 14):
    from typing import NamedTuple
else:
    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {"__module__": __name__})

__all__ = ["NamedTuple"]
