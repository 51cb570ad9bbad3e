"""What keeps the platforms' pods from running, as their watch reports it.

Pods come and go by the thousand and their specs are large, so nothing of a healthy pod is kept:
only the problem of each pod that has one (see ``status.pod_problem``), by platform and workload.
A pod finds its platform through the labels every pod template carries (namespace and
``app.kubernetes.io/instance``) and its workload through ``app.kubernetes.io/name``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from learner_operator.platforms import Key
from learner_operator.status import PodProblem, pod_problem

_INSTANCE, _APP = "app.kubernetes.io/instance", "app.kubernetes.io/name"


def _where(pod: Mapping[str, Any]) -> tuple[Key, str, str] | None:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if _INSTANCE not in labels or _APP not in labels:
        return None
    return (str(meta.get("namespace")), str(labels[_INSTANCE])), str(labels[_APP]), str(meta.get("name"))


class PodStates:
    def __init__(self) -> None:
        # platform -> (workload, pod name) -> its problem
        self._problems: dict[Key, dict[tuple[str, str], PodProblem]] = {}

    def observe(self, pod: Mapping[str, Any]) -> Key | None:
        """A pod as the watch shows it now; returns its platform if what we know of its problems changed."""
        where = _where(pod)
        if where is None:
            return None
        key, app, name = where
        problem = pod_problem(dict(pod))
        known = self._problems.get(key, {})
        if known.get((app, name)) == problem:
            return None
        if problem is None:
            del known[(app, name)]
            if not known:
                self._problems.pop(key, None)
        else:
            self._problems.setdefault(key, {})[(app, name)] = problem
        return key

    def vanish(self, pod: Mapping[str, Any]) -> Key | None:
        where = _where(pod)
        if where is None:
            return None
        key, app, name = where
        known = self._problems.get(key, {})
        if known.pop((app, name), None) is None:
            return None
        if not known:
            self._problems.pop(key, None)
        return key

    def replace(self, pods: Iterable[Mapping[str, Any]], namespace: str | None = None) -> set[Key]:
        """A fresh listing of every pod in ``namespace`` (None: all): returns the platforms whose problems
        changed. Other namespaces' pods are another listing's business."""
        before = self._problems
        self._problems = {key: problems for key, problems in before.items()
                          if namespace is not None and key[0] != namespace}
        for pod in pods:
            self.observe(pod)
        return {key for key in before.keys() | self._problems.keys() if before.get(key) != self._problems.get(key)}

    def problems(self, key: Key, app: str) -> tuple[PodProblem, ...]:
        return tuple(problem for (workload, _), problem in sorted(self._problems.get(key, {}).items())
                     if workload == app)

    def forget(self, key: Key) -> None:
        self._problems.pop(key, None)
