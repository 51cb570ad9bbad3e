"""LearnerPlatforms for property tests: generated from the CRD's own schema, and mutations of examples/.

Mostly values the schema allows, often values just outside it (bounds +-1, wrong types, nulls,
unknown fields, quantities from every corner of Kubernetes' grammar), so that both verdicts, admitted
and refused, are exercised. Used by tests/test_spec_property.py (a few hundred, fixed seed) and
``python -m bench.spec_property`` (as many as you like).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
Path_ = tuple[str | int, ...]

#: Quantities a person (or a fuzzer) writes: every suffix, exponents, extremes, and near-misses, and YAML
#: floats (``cpu: 2.0``, which kubectl sends as 2).
QUANTITY_CORNERS = [
    "0", "1", "100m", "0.5", ".5", "1.", "+1", "-1", "-0", "256Mi", "1Gi", "2Ei", "9Ei", "8Ei", "1Ki", "0.1Ki",
    "1k", "1K", "1M", "1G", "1T", "1P", "1E", "1n", "1u", "7e-12", "1e3", "1E3", "1e+3", "1e-3", "1e100",
    "1e1.5", "1.5e-2147483648", "1e2147483648", "123456789012345678901234567890", "9223372036854775807",
    "9223372036854775808", "-50857.", "lots", "", " 1", "1 ", "1\n", "1mi", "1Ki2", "0x10", "1e", "e3", ".",
    2.0, 0.0, -0.0, -1.0, 0.5, 1e18, 9.3e18, 1e21,
]


def _examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "invalid").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "LearnerPlatform":
            docs.append(doc)
    return docs


def _text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=max_size)


def quantities() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(QUANTITY_CORNERS),
        st.from_regex(r"[+-]?([0-9]{1,25}(\.[0-9]{0,12})?|\.[0-9]{1,12})([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,4})?",
                      fullmatch=True),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.integers(min_value=0, max_value=64),
    )


def _wrong() -> st.SearchStrategy[Any]:
    return st.sampled_from([None, "x", "3", "true", 3, 3.0, -1, 1.5, True, [], {}, [None]])


def for_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for one node of a structural schema: mostly right, sometimes (one in 15) wrong."""
    right, wrong = _right(node), _wrong()
    return st.integers(0, 14).flatmap(lambda roll: wrong if roll == 0 else right)


def _right(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    if node.get("x-kubernetes-int-or-string"):
        return quantities()
    kind = node.get("type")
    if "enum" in node:
        return st.one_of(st.sampled_from(node["enum"]), _text(12))
    if kind == "object" and "properties" in node:
        props: dict[str, Any] = node["properties"]
        required = set(node.get("required", []))
        known = st.fixed_dictionaries(
            {name: for_schema(props[name]) for name in sorted(required)},
            optional={name: for_schema(sub) for name, sub in props.items() if name not in required},
        )
        return st.integers(0, 19).flatmap(
            lambda roll: known.map(lambda d: {**d, "unknownField": "surprise"}) if roll == 0 else known)
    if kind == "object":
        values = node.get("additionalProperties")
        keys = st.one_of(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True), _text(10))
        return st.dictionaries(keys, for_schema(values) if isinstance(values, dict) else _text(10), max_size=3)
    if kind == "array":
        limit = node.get("maxItems", 4)
        return st.lists(for_schema(node.get("items") or {}), max_size=min(limit + 1, 4))
    if kind == "integer":
        low, high = node.get("minimum", -(2**31)), node.get("maximum", 2**31)
        return st.one_of(st.integers(low, high), st.sampled_from([low - 1, high + 1, low, high]),
                         st.integers(-(2**63), 2**63 - 1))
    if kind == "number":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**6), 10**6))
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        size = node.get("maxLength", 40)
        options = [_text(min(size + 2, 80))]
        if "pattern" in node:
            options.append(st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) <= size + 2))
            options.append(st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) <= size + 2))
        return st.one_of(*options)
    return _wrong()


def _paths(node: dict[str, Any], path: Path_ = ()) -> list[tuple[Path_, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():
        out += _paths(sub, (*path, name))
    if isinstance(node.get("items"), dict):
        out += _paths(node["items"], (*path, 0))
    return out


def _set(doc: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(doc) if isinstance(doc, list) else []
        if not items:
            items.append({})
        items[0] = _set(items[0], rest, value)
        return items
    out = dict(doc) if isinstance(doc, dict) else {}
    out[head] = _set(out.get(head), rest, value)
    return out


def _platform(spec: Any) -> dict[str, Any]:
    return {"apiVersion": "learner.dev/v1alpha1", "kind": "LearnerPlatform",
            "metadata": {"name": "ai-platform", "namespace": "learning"}, "spec": spec}


def platforms(crd: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Whole LearnerPlatform objects: half from the schema, half examples with one to three mutations."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    paths = _paths(schema)
    examples = _examples()

    @st.composite
    def mutated(draw: Callable[[st.SearchStrategy[Any]], Any]) -> dict[str, Any]:
        doc = copy.deepcopy(draw(st.sampled_from(examples)))
        spec = doc.get("spec")
        for _ in range(draw(st.integers(1, 3))):
            path, node = draw(st.sampled_from(paths[1:]))
            spec = _set(spec, path, draw(for_schema(node)))
        return _platform(spec)

    return st.one_of(st.builds(_platform, _right(schema)), mutated())
