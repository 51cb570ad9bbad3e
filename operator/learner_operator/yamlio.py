"""YAML in and out, the same way everywhere (the CRD file, `render`, the examples)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class NotYaml(ValueError):
    """The text is not YAML; the message is one line with the place (``line L, column C``) and the problem."""


class _Dumper(yaml.SafeDumper):
    """Never writes anchors/aliases: manifests must read the same to every tool and person."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def dump_all(documents: Iterable[Any]) -> str:
    return "".join("---\n" + dump(doc) for doc in documents)


def load_all(text: str) -> list[Any]:
    """Every non-empty document, whatever its shape (the caller says what it expected)."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise NotYaml(f"not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise NotYaml(f"not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # PyYAML's composer recurses once per level
        raise NotYaml("nested too deeply to be a LearnerPlatform") from None
