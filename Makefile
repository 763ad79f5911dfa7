# metaseg: every target installs what it needs first (`install` is a no-op when the venv is current).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXP    ?= demo
ARGS   ?=

.PHONY: install peers test test-fast demo meta-train benchmark benchmark-medsam bench-medsam-speed bench-episodes bench-peers bench-memory clean

install: $(STAMP)

# The exact torch the project is developed and measured with; setup.cfg only asks for a compatible
# range so metaseg installs beside other torch versions. torchvision is no dependency of metaseg
# (segmentation-models-pytorch pulls it in): pinned here so it matches this torch.
PINS   := torch==2.14.1 torchvision==0.29.1

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q $(PINS)
	$(PY) -m pip install -q -e ".[dev]" $(PINS)
	touch $(STAMP)

# Optional comparison peers (higher, torchopt, learn2learn built from its sdist): never core dependencies.
peers: install
	bash benchmarks/install_peers.sh $(PY)

test: install
	$(PY) -m pytest -q -ra $(ARGS)

demo: install
	$(PY) -m metaseg.jobs.demo $(ARGS)

meta-train: install
	$(VENV)/bin/metaseg meta-train --config experiments/$(EXP).yaml $(ARGS)

benchmark: install
	$(PY) -m benchmarks.fewshot --config benchmarks/fewshot.yaml $(ARGS)

# The LiteMedSAM rows (issue 16): 128 px, pretrained base, embedding cache; ~1 h on 2 CPU cores.
benchmark-medsam: install
	$(PY) -m benchmarks.fewshot --config benchmarks/fewshot_medsam.yaml $(ARGS)

bench-medsam-speed: install
	$(PY) -m benchmarks.medsam_speed $(ARGS)

bench-episodes: install
	$(PY) -m benchmarks.episodes $(ARGS)

bench-peers: peers
	$(PY) -m benchmarks.peers $(ARGS)

bench-memory: install
	$(PY) -m benchmarks.memory $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache runs
