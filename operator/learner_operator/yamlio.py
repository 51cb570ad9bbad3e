"""YAML in and out, the same way everywhere (the CRD file, `render`, the examples)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """Never writes anchors/aliases: manifests must read the same to every tool and person."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def dump_all(documents: Iterable[Any]) -> str:
    return "".join("---\n" + dump(doc) for doc in documents)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]
