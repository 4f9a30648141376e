# The README's two commands: `make run` (main job on its embedded default) and `make test`.
PY := .venv/bin/python
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8

.PHONY: setup run test test-all

setup:
	bash scripts/setup.sh

run: setup
	$(PY) -m recipes.crystal --mesh 8x1

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30

test-all: setup
	$(PY) -m pytest -m '' -n 2 --dist loadfile --durations=30
