"""Wire protocols: the MQTT link and the light-node protocol. Nothing else speaks to sockets."""
