"""Field devices that speak cityctl's real protocols over real sockets.

- :mod:`simulator.lights` — street-light nodes over MQTT (:class:`~simulator.lights.LightSimulator`,
  :func:`~simulator.lights.run_lights`), built on the pure node model in
  :mod:`simulator.lights_node`.

Nothing imports this package except the CLI and the tests; it depends on ``devices`` (codecs and
links) only.
"""
