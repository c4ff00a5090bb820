"""Street lighting: the pure control core, fault inference, traffic classes and the MQTT shell."""
