"""The Kubernetes CEL quantity library (k8s.io/apiserver/pkg/cel/library/quantity.go) for cel-python.

CRD rules may call ``quantity(string)``, ``isQuantity(string)`` and the Quantity methods ``compareTo``,
``isLessThan``, ``isGreaterThan``, ``sign``, ``isInteger``, ``asInteger``, ``asApproximateFloat``,
``add`` and ``sub``; the API server parses with resource.ParseQuantity, as
``learner_operator.models.quantity`` does (a port of it), so the emulator's verdict is the server's.
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

from celpy import celtypes

from learner_operator.models.quantity import MAX_ALLOWED, QuantityError, parse

_INT64 = (-(2**63), 2**63 - 1)


@functools.total_ordering
class CelQuantity:
    """A parsed quantity as a CEL value (an opaque type: only its methods read it)."""

    def __init__(self, value: Decimal) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CelQuantity) and self.value == other.value

    def __lt__(self, other: CelQuantity) -> bool:
        return self.value < other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"quantity({self.value})"


def _text(value: Any) -> str:
    if not isinstance(value, str):  # celtypes.StringType is a str
        raise TypeError(f"no such overload: quantity({type(value).__name__})")
    return str(value)


def _quantity(value: Any) -> CelQuantity:
    try:
        return CelQuantity(parse(_text(value)).value)
    except QuantityError as exc:
        raise ValueError(f"quantities must match the regular expression: {exc}") from None


def _is_quantity(value: Any) -> celtypes.BoolType:
    try:
        parse(_text(value))
    except QuantityError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _compare(a: CelQuantity, b: CelQuantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


def _as_integer(a: CelQuantity) -> celtypes.IntType:
    if a.value != a.value.to_integral_value() or not _INT64[0] <= a.value <= _INT64[1]:
        raise ValueError("cannot convert value to integer")
    return celtypes.IntType(int(a.value))


def _arith(a: CelQuantity, b: Any, sign: int) -> CelQuantity:
    other = b.value if isinstance(b, CelQuantity) else Decimal(int(b))
    return CelQuantity(max(min(a.value + sign * other, MAX_ALLOWED), -MAX_ALLOWED))


FUNCTIONS: dict[str, Any] = {
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "compareTo": _compare,
    "isLessThan": lambda a, b: celtypes.BoolType(a.value < b.value),
    "isGreaterThan": lambda a, b: celtypes.BoolType(a.value > b.value),
    "sign": lambda a: celtypes.IntType((a.value > 0) - (a.value < 0)),
    "isInteger": lambda a: celtypes.BoolType(a.value == a.value.to_integral_value()
                                             and _INT64[0] <= a.value <= _INT64[1]),
    "asInteger": _as_integer,
    "asApproximateFloat": lambda a: celtypes.DoubleType(float(a.value)),
    "add": lambda a, b: _arith(a, b, 1),
    "sub": lambda a, b: _arith(a, b, -1),
}
