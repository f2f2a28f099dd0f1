"""Orchestration: the workdir store, the runner, recipes, the CLI. The Python API lives in `pipelines.api`."""
