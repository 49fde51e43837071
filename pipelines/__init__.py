"""The command line: `python -m pipelines run|plan|show|ls|gc ...`."""
