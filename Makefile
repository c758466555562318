# Entry points. Each target installs what it needs first (scripts/setup.sh is idempotent).
.PHONY: setup demo test lint bench clean cluster-up cluster-status cluster-down

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

# A Spark standalone + Ray cluster on this machine's loopback (scripts/cluster.sh).
cluster-up: setup
	@bash scripts/cluster.sh up

cluster-status:
	@bash scripts/cluster.sh status

cluster-down:
	@bash scripts/cluster.sh down

clean:
	rm -rf lake data runs out spark-warehouse
