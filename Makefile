# kr-mini-llm: `make test` sets up and runs the tests; `make install` only sets up.
PYTHON ?= python3
# The torch to install when none is present (any torch >= 2.4 works; see README).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test bench-ops clean

install:
	bash scripts/install_system_deps.sh
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -r requirements-build.txt
	$(PYTHON) -m pip install --no-build-isolation -e ".[test]"

test: install
	$(PYTHON) -m pytest tests

bench-ops: install
	$(PYTHON) scripts/bench_ops.py

clean:
	rm -rf build kr_mini_llm/_C*.so *.egg-info
