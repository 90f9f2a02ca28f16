"""Prefect flows: thin wrappers that map library steps over input shards."""
