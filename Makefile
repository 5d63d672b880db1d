# Two commands set up a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MINUTES ?= 5
CHAT_MINUTES ?= 3
DPO_STEPS ?= 680
DPO_MINUTES ?= 15

.PHONY: demo demo-chat test test-fast lint install browser-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch goes first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/goushi demo --minutes $(MINUTES)

demo-chat: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/goushi demo --chat --minutes $(MINUTES) --chat-minutes $(CHAT_MINUTES) \
		$(if $(DPO),--dpo --dpo-steps $(DPO_STEPS) --dpo-minutes $(DPO_MINUTES))

test: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
