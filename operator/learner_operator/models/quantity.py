"""Kubernetes resource quantities, parsed as ``resource.ParseQuantity`` (k8s.io/apimachinery) parses them.

A port, not a look-alike: the API server admits whatever its own parser takes (``2Ei``, ``1e3``,
``.5``, ``1.``, ``7e-12``, ``123456789012345678901234567890``), and the CRD's rules call that parser
(CEL's ``quantity()``/``isQuantity()``), so the models must take exactly the same strings and give them
the same value, or render and the operator disagree with admission (or crash, as ``Decimal("2")``
times a suffix table once did on ``2Ei``).

Grammar (from quantity.go)::

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= <number> | "+" <number> | "-" <number>
    <number>          ::= <digits> | <digits> "." <digits> | <digits> "." | "." <digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= m | "" | k | M | G | T | P | E      (and n, u)
    <decimalExponent> ::= "e" <int64> | "E" <int64>

The value is then what the Go code makes of it: exact where it fits its int64 fast path; otherwise
rounded up (away from zero) to a multiple of 1n and capped at 2^63-1 in magnitude. Exponents are the
Go code's ``int32`` (a wrapped one included), so a pathological string still gets the server's value.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from decimal import Decimal
from typing import Literal

Format = Literal["DecimalSI", "BinarySI", "DecimalExponent"]

#: The largest magnitude a quantity keeps when it leaves the parser's int64 fast path (maxAllowed).
MAX_ALLOWED = Decimal(2**63 - 1)
NANO = Decimal("1e-9")
#: The CRD's pattern (the one the Kubernetes OpenAPI schema gives Quantity): a string must match it
#: *and* parse, as the API server checks both for the CRD's fields.
PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_PATTERN_RE = re.compile(PATTERN)

_DECIMAL_SUFFIXES: dict[str, int] = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
                                     "E": 18}
_BINARY_SUFFIXES: dict[str, int] = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_MAX_INT64_FACTORS = 18
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_INT64_DIGITS = re.compile(r"^[+-]?[0-9]+$")


class QuantityError(ValueError):
    """Not a quantity the API server would parse; the message says what a quantity looks like."""


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A parsed quantity: its exact value (after the parser's rounding and cap) and its format."""

    value: Decimal
    format: Format


def _int32(value: int) -> int:
    """Go's int32 conversion: wraps around."""
    return (value + 2**31) % 2**32 - 2**31


def _split(text: str) -> tuple[bool, str, str, str, str]:
    """``parseQuantityString``: (positive, value, numerator, denominator, suffix); QuantityError if malformed."""
    positive, pos, end = True, 0, len(text)
    if pos < end and text[0] in "+-":
        positive = text[0] == "+"
        pos += 1
    while pos < end and text[pos] == "0":  # leading zeros
        pos += 1
    if pos >= end:
        return positive, "0", "0", "", ""
    start = pos
    while pos < end and text[pos].isascii() and text[pos].isdigit():
        pos += 1
    num = text[start:pos] or "0"
    if pos >= end:
        return positive, text, num, "", ""
    denom = ""
    if text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos].isascii() and text[pos].isdigit():
            pos += 1
        denom = text[start:pos]
        if pos >= end:
            return positive, text, num, denom, ""
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos >= end:
        return positive, value, num, denom, text[suffix_start:]
    if text[pos] in "+-":
        pos += 1
    while pos < end and text[pos].isascii() and text[pos].isdigit():
        pos += 1
    if pos >= end:
        return positive, value, num, denom, text[suffix_start:]
    raise QuantityError("quantities must match the regular expression "
                        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")


def _interpret(suffix: str) -> tuple[int, int, Format]:
    """(base, exponent, format) of a suffix, as the suffixer reads it."""
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix], "DecimalSI"
    if suffix in _BINARY_SUFFIXES:
        return 2, _BINARY_SUFFIXES[suffix], "BinarySI"
    if len(suffix) > 1 and suffix[0] in "eE" and _INT64_DIGITS.fullmatch(suffix[1:]):
        parsed = int(suffix[1:])
        if _INT64_MIN <= parsed <= _INT64_MAX:
            return 10, _int32(parsed), "DecimalExponent"
    raise QuantityError("unable to parse quantity's suffix")


def _context(digits: int) -> decimal.Context:
    return decimal.Context(prec=digits + 40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN,
                           rounding=decimal.ROUND_UP, traps=[decimal.InvalidOperation])


def parse(value: str | int) -> Quantity:
    """``resource.ParseQuantity``: the value a Kubernetes API server gives this string (or whole number)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QuantityError("a quantity is a string such as 100m or 256Mi, or a whole number")
    text = str(value)
    if not text:
        raise QuantityError("quantities must match the regular expression "
                            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    if text == "0":
        return Quantity(Decimal(0), "DecimalSI")
    positive, number, num, denom, suffix = _split(text)
    base, exponent, fmt = _interpret(suffix)
    sign = 1 if positive else -1

    # The int64 fast path: the value is kept exactly (no cap, no rounding).
    precision, scale, mantissa = 0, 0, 1
    if fmt != "BinarySI":
        scale = exponent
        precision = _MAX_INT64_FACTORS - (len(num) + len(denom))
    elif exponent >= 0 and not denom:
        mantissa = 1 << exponent
        precision = 15 - len(num) - int(exponent * 3 / 10) - 1
    else:
        precision = -1
    if precision >= 0:
        scale = _int32(scale - len(denom))
        if scale >= -9:
            shifted = int(num + denom)  # at most 18 digits here: fits int64
            result = shifted * mantissa
            if result <= _INT64_MAX:
                return Quantity(Decimal(sign * result).scaleb(scale, _context(40)), fmt)

    # The inf.Dec slow path: exact, then rounded up (away from zero) to 1n and capped at 2^63-1.
    if not any(c.isdigit() for c in number):
        raise QuantityError("unable to parse quantity's numeric value")  # inf.Dec refuses "." or "+."
    context = _context(len(num) + len(denom))
    unscaled = Decimal(num + denom)
    if base == 10:
        amount = unscaled.scaleb(-_int32(len(denom) - exponent), context)
    else:
        amount = context.multiply(unscaled.scaleb(-len(denom), context), Decimal(2**exponent))
    if amount > MAX_ALLOWED:
        amount = MAX_ALLOWED
    elif amount != 0:
        amount = NANO if amount.adjusted() < -9 else amount.quantize(NANO, context=context)
    if fmt == "BinarySI" and 0 < amount < 1:
        fmt = "DecimalSI"
    return Quantity(sign * amount, fmt)


def parse_quantity(value: str | int) -> Decimal:
    """The numeric value of a Kubernetes quantity ("100m" -> 0.1, "256Mi" -> 268435456, "2Ei" -> 2**61).

    Raises QuantityError (a ValueError) for anything the API server's schema would refuse: a string
    must also match the OpenAPI pattern the CRD carries (``1e1.5`` matches it, but does not parse;
    ``.`` parses as zero in Go, but does not match it).
    """
    if isinstance(value, str) and not _PATTERN_RE.fullmatch(value):
        raise QuantityError(f"{value!r} is not a Kubernetes quantity (examples: 100m, 0.5, 256Mi, 1Gi, 2e3)")
    try:
        return parse(value).value
    except QuantityError as exc:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity ({exc})") from None
