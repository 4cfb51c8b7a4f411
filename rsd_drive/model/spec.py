"""The model's named inputs and outputs and its checkpoint file names, without torch.

The exporter, the deploy artifact, the backends and the node agree on these names; this module
imports nothing heavy, so the vehicle (no torch) can use them.
"""

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.yaml'
INPUT_NAMES = ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')
OUTPUT_NAMES = ('waypoints', 'risk')
