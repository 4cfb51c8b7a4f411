"""Importers: public dataset scenes -> rosbag2 recordings as a vehicle would write them."""
