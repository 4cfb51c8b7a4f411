"""Data path shared by the offline tools and the live node: message conversion, time
synchronisation, odometry history, preprocessing and the training index."""
