# needle: `make` builds the backends in place; `make test` installs, builds and tests.
PYTHON ?= python3
BUILD_DIR ?= build
CMAKE_ARGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all lib deps test-deps test demo bench gpu-check clean

all: lib

lib:
	-$(PYTHON) -m pip install -q -r requirements.txt
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$$(command -v $(PYTHON))" $(CMAKE_ARGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

deps:
	$(PYTHON) -m pip install -q -r requirements.txt

test-deps:
	$(PYTHON) -m pip install -q -r requirements-test.txt

test: test-deps lib
	$(PYTHON) -m pytest -q
	NEEDLE_BACKEND=np $(PYTHON) -m pytest -q tests/np_mode

demo: deps lib
	$(PYTHON) -m apps.demo

# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some machines for old OpenBLAS builds)
# slow a current numpy down: the numpy reference runs without them.
bench: lib
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/run.py

# The CUDA check on a machine with a GPU: fresh build for that GPU, the tests with every CUDA
# case, memcheck, the apps and the GPU benchmarks in under 8 minutes; results in
# benchmarks/results/cuda-<date>.json (GPU_CHECK_OUT=dir gets a copy). Without a GPU: one line.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(BUILD_DIR) python/needle/backend_ndarray/*.so
