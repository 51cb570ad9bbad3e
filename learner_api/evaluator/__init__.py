"""The evaluator: the worker that moves progress from the Redis Stream into PostgreSQL, and the alert
rules over platform state. Same image as learner-api, started with `learner-api evaluator`."""
