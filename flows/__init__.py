"""Prefect flows and deployments chaining the tasks of `tasks/`."""
