"""The model's named inputs and outputs and its checkpoint file names, without torch.

The exporter, the deploy artifact, the backends and the node agree on these names; this module
imports nothing heavy, so the vehicle (no torch) can use them.
"""

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.yaml'
INPUT_NAMES = ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')
# The optional route input (``ModelConfig.route_points > 0``): route [B, R, 2] in base_link and
# route_valid [B] (1: plan along the route, 0: intent only). Models without it keep five inputs.
ROUTE_INPUT_NAMES = ('route', 'route_valid')
OUTPUT_NAMES = ('waypoints', 'risk')


def input_names(config) -> tuple:
    """The named inputs of a model with this config (five, or seven with the route)."""
    return INPUT_NAMES + (ROUTE_INPUT_NAMES if getattr(config, 'route_points', 0) else ())
