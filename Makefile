# Thin wrappers over scripts/ (each one does the set-up first).
.PHONY: setup vm test stress bench

setup:
	scripts/setup.sh

vm:
	scripts/run-vm

test:
	scripts/run-tests

stress:
	scripts/run-tests -m stress

bench: setup
	.venv/bin/python -m bench
