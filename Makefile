# bmengine: the two set-up commands of the README are `make demo` and `make test`.
# Both create .venv/ in the repo root on a fresh clone and install what they need.

VENV ?= .venv
PY := $(VENV)/bin/python
BMENGINE := $(VENV)/bin/bmengine
ENGINE_STAMP := $(VENV)/.bmengine-engine
TRAIN_STAMP := $(VENV)/.bmengine-train
PBC ?= ../shared/data/pbc
RUN_DIR ?= runs/default-pbc
EXPORT := $(RUN_DIR)/export/pbc_regnetx032_se_cs.onnx

.PHONY: demo test install install-train default-model sample-slides bench doctor clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The engine alone: ONNX Runtime, DALI, zarr, Dask (no PyTorch).
$(ENGINE_STAMP): pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# Engine + training + tests (torch 2.14.1 / torchvision 0.29.1, timm, grad-cam, onnx, pytest).
$(TRAIN_STAMP): pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -q -e '.[train,test]'
	touch $@ $(ENGINE_STAMP)

install: $(ENGINE_STAMP)
install-train: $(TRAIN_STAMP)

## demo: install the engine and run it on the shipped sample slides with the shipped model
demo: $(ENGINE_STAMP)
	$(BMENGINE) run engine/assets/sample_slides --out demo-out

## test: install everything and run the test suite (what .ci/run calls)
test: $(TRAIN_STAMP)
	$(PY) -m pytest -q

## default-model: re-train and re-export the shipped default model (about 25 min on 2 AMD EPYC cores, 80 img/s)
default-model: $(TRAIN_STAMP)
	$(BMENGINE) train $(PBC) --out $(RUN_DIR) --backbone regnetx_032 --attention se --loss cost_sensitive \
		--epochs 10 --batch-size 64 --lr 2e-3 --resize 128 --crop 112 --seed 0
	$(BMENGINE) export $(RUN_DIR)/checkpoints/last.pt --out $(EXPORT) --name pbc-regnetx032-se-cs
	mkdir -p engine/assets/models  # only the int8 model ships (size); its card records fp32 too
	cp $(RUN_DIR)/export/pbc_regnetx032_se_cs_int8.onnx $(RUN_DIR)/export/pbc_regnetx032_se_cs_int8.onnx.card.json engine/assets/models/

## sample-slides: rebuild the demo's synthetic patients from the default model's validation crops
sample-slides: $(ENGINE_STAMP)
	$(BMENGINE) build-samples --data $(PBC)

bench: $(ENGINE_STAMP)
	$(BMENGINE) bench engine/assets/sample_slides

doctor: $(ENGINE_STAMP)
	$(BMENGINE) doctor

clean:
	rm -rf demo-out bmengine-out .pytest_cache
