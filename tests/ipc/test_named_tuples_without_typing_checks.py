"""ipc.tuples.NamedTuple builds the classes typing.NamedTuple builds (fields, defaults,
docstring, methods, pickling, the errors of a bad class body), without compiling the
string annotations of ``from __future__ import annotations``."""

from __future__ import annotations

import builtins
import pickle
import sys
import typing
from collections.abc import Iterator

import pytest

from ipc.tuples import NamedTuple


class Point(NamedTuple):
    """A point."""

    x: int
    label: str | None = None
    weight: float = 1.0

    def doubled(self) -> Point:
        return self._replace(x=self.x * 2)

    @classmethod
    def origin(cls) -> Point:
        return cls(0, "o")


class TypingPoint(typing.NamedTuple):
    """A point."""

    x: int
    label: str | None = None
    weight: float = 1.0


def test_the_same_class_as_typings() -> None:
    p = Point(3)
    assert p == (3, None, 1.0) and isinstance(p, tuple)
    assert repr(p) == "Point(x=3, label=None, weight=1.0)"
    assert Point._fields == TypingPoint._fields
    assert Point._field_defaults == TypingPoint._field_defaults
    assert Point.__doc__ == "A point."
    assert Point.__module__ == __name__ and Point.__qualname__ == "Point"
    assert p.doubled() == Point(6) and Point.origin() == Point(0, "o")
    assert p._asdict() == {"x": 3, "label": None, "weight": 1.0}
    assert pickle.loads(pickle.dumps(Point(1, "a", 2.0))) == Point(1, "a", 2.0)
    assert type(pickle.loads(pickle.dumps(p))) is Point
    if sys.version_info < (3, 14):  # there: typing's own, annotations evaluated lazily
        assert Point.__annotations__ == {"x": "int", "label": "str | None", "weight": "float"}
    with pytest.raises(AttributeError):
        p.x = 4  # type: ignore[misc]


def test_a_bad_class_body_fails_as_with_typing() -> None:
    with pytest.raises(TypeError):

        class Late(NamedTuple):
            a: int = 0
            b: int

    with pytest.raises(AttributeError):

        class Replaced(NamedTuple):
            a: int

            def _replace(self, **kwargs: object) -> Replaced:  # type: ignore[override]
                return self


@pytest.fixture
def compiled() -> Iterator[list[str]]:
    """The sources builtins.compile is given while the test runs."""
    sources: list[str] = []
    real = builtins.compile

    def counting(source: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        sources.append(str(source))
        return real(source, *args, **kwargs)

    builtins.compile = counting
    try:
        yield sources
    finally:
        builtins.compile = real


def test_no_annotation_is_compiled(compiled: list[str]) -> None:
    class Record(NamedTuple):
        name: str
        size: int | None = None

    assert Record("a") == ("a", None)
    if sys.version_info < (3, 14):
        assert compiled == []
