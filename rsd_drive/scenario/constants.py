"""Constants shared by the simulation (``scenario.sim``) and the hazard families
(``scenario.families``), so that families imports sim's numbers without sim importing families
back: the ego's footprint and the trigger's speed floor."""
from rsd_drive.scenario.road import VEHICLE_SIZE

# Ego footprint: length, width; base_link (rear axle) sits EGO_REAR metres ahead of the rear.
EGO_LENGTH, EGO_WIDTH = VEHICLE_SIZE[0], VEHICLE_SIZE[1]
EGO_REAR = 1.0
EGO_CENTRE_X = EGO_LENGTH / 2 - EGO_REAR
TRIGGER_MIN_SPEED = 2.0  # time-to-arrival triggers divide by at least this speed (m/s)
