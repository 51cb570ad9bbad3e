"""Typed, versioned models of the LearnerPlatform API (one module per version)."""

from learner_operator.models.parsing import InvalidSpec, ParsedPlatform, parse_object, parse_spec
from learner_operator.models.quantity import parse_quantity
from learner_operator.models.v1alpha1 import (
    API_VERSION,
    CONDITION_TYPES,
    FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    ImageSpec,
    LearnerPlatformSpec,
    LearnerPlatformStatus,
    WorkloadStatus,
)

__all__ = [
    "API_VERSION",
    "CONDITION_TYPES",
    "FIELD_MANAGER",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "ImageSpec",
    "InvalidSpec",
    "LearnerPlatformSpec",
    "LearnerPlatformStatus",
    "ParsedPlatform",
    "WorkloadStatus",
    "parse_object",
    "parse_quantity",
    "parse_spec",
]
