"""learner-platform's Kubernetes operator: LearnerPlatform custom resources in, learner services out."""

__version__ = "0.1.0"
