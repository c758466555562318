# Entry points. Each target installs what it needs first (scripts/setup.sh is idempotent).
.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

lint: setup
	@.venv/bin/ruff check . && .venv/bin/mypy

bench: setup
	@bash scripts/bench.sh

clean:
	rm -rf lake data runs out spark-warehouse
