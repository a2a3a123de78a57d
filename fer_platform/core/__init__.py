"""Plain-Python logic of fer-platform. Nothing in this package imports dagster."""
