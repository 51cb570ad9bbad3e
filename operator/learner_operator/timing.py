"""What a reconcile returns to the work queue (learner_operator.engine) about when to look again."""

from __future__ import annotations


class Later(float):
    """Look again after this many seconds because something is planned then (the next canary analysis): not a
    failure, so no backoff, and a trigger meanwhile still runs at once."""

    __slots__ = ()
