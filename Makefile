# bmengine: the two set-up commands of the README are `make demo` and `make test`.
# Both create .venv/ in the repo root on a fresh clone and install what they need.

VENV ?= .venv
PY := $(VENV)/bin/python
BMENGINE := $(VENV)/bin/bmengine
ENGINE_STAMP := $(VENV)/.bmengine-engine
TRAIN_STAMP := $(VENV)/.bmengine-train
PBC ?= ../shared/data/pbc
RUN_DIR ?= runs/default-cross-lab
MIXED_RUN_DIR ?= runs/default-mixed-pass
TRAIN_FLAGS ?=  # e.g. --device cuda --threads 12 on a GPU machine (training runs on the GPU by default when torch sees one)
EXPORT := $(MIXED_RUN_DIR)/export/pbc_coatnet0_cs.onnx
FAST_RUN_DIR ?= runs/fast-pbc-regnetx

.PHONY: demo test install install-train default-model fast-model sample-slides bench doctor clean

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
## The suite runs on one worker per core (at most 4), each test file on one worker so that a file's
## fixtures are built once: about half the time of one process on 2 cores. TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= auto
test: $(TRAIN_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --durations 15

## default-model: re-train and re-export the shipped default, CoAtNet-0 + cost-sensitive at 128 px: 10 epochs with
## the cross-lab augmentation on half of each batch (about 70 min on 2 AMD EPYC cores), then 4 epochs from those
## weights at a quarter of the learning rate with the augmentation on a quarter of each batch (about 25 min;
## benchmarks/results/cross-lab-recipes.md, "mixed clean pass"); export: symmetric int8 (TensorRT-ready) of its
## convolutions, percentile calibration, OOD head and temperature in the card, and the weights in half precision
## beside it (what `bmengine finetune MODEL.onnx` starts from). The weights shipped since 2026-11-26 (late) are this
## recipe's seed-0 run trained on a lent H200 by benchmarks/gpu_training.py (about 200 s there; its card says how
## its training images travelled): benchmarks/results/2026-11-26-h200-training.md
default-model: $(TRAIN_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BMENGINE) train $(PBC) --out $(RUN_DIR) --backbone coatnet_0 --attention none \
		--loss cost_sensitive --epochs 10 --batch-size 64 --lr 2e-3 --resize 144 --crop 128 --seed 0 \
		--augment cross-lab --augment-opt colour_p=0.5 --augment-opt zoom_p=0.5 $(TRAIN_FLAGS)
	OMP_WAIT_POLICY=PASSIVE $(BMENGINE) train $(PBC) --out $(MIXED_RUN_DIR) --backbone coatnet_0 --attention none \
		--loss cost_sensitive --epochs 4 --batch-size 64 --lr 5e-4 --resize 144 --crop 128 --seed 0 \
		--init-from $(RUN_DIR)/checkpoints/last.pt --warmup-epochs 0 \
		--augment cross-lab --augment-opt colour_p=0.25 --augment-opt zoom_p=0.25 $(TRAIN_FLAGS)
	OMP_WAIT_POLICY=PASSIVE $(BMENGINE) export $(MIXED_RUN_DIR)/checkpoints/last.pt --out $(EXPORT) \
		--name pbc-coatnet0-cs-crosslab-mixed --with-checkpoint
	rm -f engine/assets/models/*.onnx engine/assets/models/*.card.json engine/assets/models/*.pt  # one default ships
	mkdir -p engine/assets/models  # only the int8 model ships (size); its card records fp32 too
	cp $(MIXED_RUN_DIR)/export/pbc_coatnet0_cs_int8.onnx $(MIXED_RUN_DIR)/export/pbc_coatnet0_cs_int8.onnx.card.json \
		$(MIXED_RUN_DIR)/export/pbc_coatnet0_cs.checkpoint.pt engine/assets/models/  # .pt: what finetune starts from

## fast-model: the previous default, RegNetX-3.2GF + SE + cost-sensitive at 112 px: 0.3-1.3 points of
## macro-F1 below the default (two seeds), 3x its speed on a CPU (about 22 min); written to $(FAST_RUN_DIR)/export
fast-model: $(TRAIN_STAMP)
	$(BMENGINE) train $(PBC) --out $(FAST_RUN_DIR) --backbone regnetx_032 --attention se --loss cost_sensitive \
		--epochs 10 --batch-size 64 --lr 2e-3 --resize 128 --crop 112 --seed 0
	$(BMENGINE) export $(FAST_RUN_DIR)/checkpoints/last.pt --out $(FAST_RUN_DIR)/export/pbc_regnetx032_se_cs.onnx \
		--name pbc-regnetx032-se-cs

## sample-slides: rebuild the demo's synthetic patients from the default model's validation crops
sample-slides: $(ENGINE_STAMP)
	$(BMENGINE) build-samples --data $(PBC)

bench: $(ENGINE_STAMP)
	$(BMENGINE) bench engine/assets/sample_slides

doctor: $(ENGINE_STAMP)
	$(BMENGINE) doctor

clean:
	rm -rf demo-out bmengine-out .pytest_cache
