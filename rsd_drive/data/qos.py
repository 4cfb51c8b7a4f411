"""QoS profiles of topics written into bags (``rosbags`` types, no rclpy), shared by the scenario
recorder and the dataset importers."""
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)

# /tf_static is latched: transient local, reliable, depth 1 (what tf2's static broadcaster offers).
TF_STATIC_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE,
                    QosDurability.TRANSIENT_LOCAL, QosTime(0, 0), QosTime(0, 0),
                    QosLiveliness.AUTOMATIC, QosTime(0, 0), False)
