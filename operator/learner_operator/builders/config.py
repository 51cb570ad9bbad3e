"""The ConfigMap (non-secret settings) and the ServiceAccounts."""

from __future__ import annotations

from learner_operator.builders import common as c


def config_map(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": c.metadata(p, c.config_name(p), "learner-platform", "config"),
        "data": c.config_data(p),
    }


def service_account(p: c.Platform, name: str, app: str, component: str) -> c.Manifest:
    """No pod of the platform talks to the Kubernetes API, so no token is mounted."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": c.metadata(p, name, app, component),
        "automountServiceAccountToken": False,
    }
