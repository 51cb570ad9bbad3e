"""learner-api: the learner-facing service (content, progress, store) and its evaluator worker."""

__version__ = "0.1.0"
