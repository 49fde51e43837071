.PHONY: test lint fmt bench data
test:
	python -m pytest -q
lint:
	ruff check . && ruff format --check .
fmt:
	ruff format . && ruff check --fix .
bench:
	python benchmarks/spine.py
data:
	python -m stages.data.demo.generate
