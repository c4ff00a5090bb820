"""The SUMO bridge: cityctl's controller on Eclipse SUMO's traffic, through field devices.

``network`` describes a network's traffic lights as plain data; the rest of the package places
detectors, runs the simulation in lock-step, re-types the network's own programs for the
baselines and reads SUMO's outputs back. SUMO itself (``eclipse-sumo``, ``libsumo``,
``sumolib``, ``traci``) is the optional extra ``cityctl[sumo]``; nothing outside this package
and the benchmark imports it.
"""
