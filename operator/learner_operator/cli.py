"""`learner-operator`: run the operator, render a CR's children, or print the CRD."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from learner_operator import __version__, yamlio
from learner_operator.builders import Platform, children, secret_digest
from learner_operator.drift import with_digest
from learner_operator.models import API_VERSION, KIND, InvalidSpec, parse_spec
from learner_operator.models.crd import custom_resource_definition

_PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def _read_env_file(path: Path) -> dict[str, bytes]:
    """The same format as `kubectl create secret generic --from-env-file` (KEY=value lines)."""
    data: dict[str, bytes] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            data[key.strip()] = value.encode()
    return data


def render(documents: Sequence[dict[str, Any]], secret_data: dict[str, bytes] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for doc in documents:
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
            raise InvalidSpec(f"expected apiVersion {API_VERSION} and kind {KIND}, got "
                              f"{doc.get('apiVersion')}/{doc.get('kind')}")
        meta = doc.get("metadata") or {}
        spec = parse_spec(doc.get("spec"))
        uid = str(meta.get("uid") or _PLACEHOLDER_UID)
        platform = Platform(
            name=str(meta.get("name", "")), namespace=str(meta.get("namespace") or "default"), uid=uid, spec=spec,
            secret_hash=secret_digest(uid, secret_data) if secret_data is not None else "unknown",
        )
        out += [with_digest(manifest) for manifest in children(platform)]
    return out


def _cmd_render(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    secret = _read_env_file(Path(args.secret_env_file)) if args.secret_env_file else None
    try:
        manifests = render(yamlio.load_all(text), secret)
    except InvalidSpec as exc:
        print(f"error: {args.filename}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(yamlio.dump_all(manifests))
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    text = yamlio.dump(custom_resource_definition())
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from learner_operator.runner import run  # imports kopf: only the `run` command needs it

    return run(
        namespaces=args.namespace, all_namespaces=args.all_namespaces, peering=args.peering,
        liveness=args.liveness, metrics_port=args.metrics_port,
        lease_namespace=args.lease_namespace if args.leader_election else None, lease_seconds=args.lease_seconds,
        resync_seconds=args.resync_seconds, verbose=args.verbose,
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="learner-operator", description=__doc__)
    top.add_argument("--version", action="version", version=__version__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    run.add_argument("--peering", help="kopf peering object: lets a higher-priority (e.g. a developer's) operator "
                     "pause this one; needs kopf's peering CRDs. Without it the operator runs standalone.")
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=True,
                     help="reconcile only while holding a Lease, so several replicas can run (default: on)")
    run.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                     help="namespace of the leader Lease (default: $POD_NAMESPACE, else default)")
    run.add_argument("--lease-seconds", type=int, default=15,
                     help="how long a crashed leader's Lease blocks a new leader (renewed every third of it)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    run.add_argument("--metrics-port", type=int, default=9090, help="port of the operator's /metrics")
    run.add_argument("--resync-seconds", type=float, default=300.0, help="full resync period")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)

    rend = sub.add_parser("render", help="print the manifests a LearnerPlatform turns into (no cluster)")
    rend.add_argument("-f", "--filename", required=True, help="a LearnerPlatform YAML file, or - for stdin")
    rend.add_argument("--secret-env-file", help="the env file the Secret is made from, for the rollout hash")
    rend.set_defaults(func=_cmd_render)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the models")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.set_defaults(func=_cmd_crd)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (OSError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
