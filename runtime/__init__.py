"""Execution: the store, the executor, launchers and the worker that runs one stage."""
