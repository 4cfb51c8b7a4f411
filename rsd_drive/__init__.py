"""rsd_drive: frozen-encoder end-to-end planner with VLM risk semantic distillation, for ROS 2.

Core packages (model, data, teacher, train, deploy, scenario) never import rclpy; the ROS 2 glue
lives in :mod:`rsd_drive.ros`.
"""

__version__ = '0.1.0'

# Driving intent indices, in the Waymo Open E2E order.
INTENTS = ('unknown', 'straight', 'left', 'right')
