"""The recipes: which SUMO commands, with which options and seeds, make each scenario.

A recipe is plain data. Its JSON form (plus the text of the hand-written inputs it names,
:data:`RECIPE_VERSION` and the SUMO release) is hashed into the cache stamp, so changing any
option here rebuilds the scenarios that use it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RECIPES",
    "RECIPE_VERSION",
    "Demand",
    "FringeWeights",
    "NetRecipe",
    "Recipe",
]

RECIPE_VERSION = 1
"""Bump when the build code changes what it writes without any recipe option changing."""

HOUR_S = 3600

URBAN_SPEED_MS = "13.89"
"""50 km/h on every road of the set."""

# Options every traffic light of the set is built with (netconvert and netgenerate share them).
#  - fixed 4 s yellow instead of the one derived from the deceleration (≥ 3 s rule);
#  - 2 s all-red after every yellow before a conflicting green (≥ 1 s rule);
#  - protected left phases of 8 s after the permissive (yielding 'g') through phase, where a
#    left-turn lane exists: the left-turn pocket is served even against heavy opposing flow;
#  - SUMO's default 90 s cycle and 'opposites' layout, spelled out so a change of SUMO's
#    defaults cannot change the set silently.
TLS_OPTIONS: tuple[str, ...] = (
    "--tls.layout",
    "opposites",
    "--tls.cycle.time",
    "90",
    "--tls.yellow.time",
    "4",
    "--tls.allred.time",
    "2",
    "--tls.left-green.time",
    "8",
    "--tls.default-type",
    "static",
)

COMMON_NET_OPTIONS: tuple[str, ...] = (
    # No U-turns at the junctions: a U-turn lane would share the left-turn pocket and its
    # signal, which no real plan does, and fringe trips never need one.
    "--no-turnarounds",
)


@dataclass(frozen=True)
class NetRecipe:
    """How the network is made."""

    tool: Literal["netgenerate", "netconvert"]
    args: tuple[str, ...]
    """Options without the output file (``-o`` is added by the builder)."""
    inputs: tuple[str, ...] = ()
    """Hand-written plain-XML files of this package the options name (copied next to them)."""


@dataclass(frozen=True)
class FringeWeights:
    """Weights of the fringe edges as trip sources and destinations, by road.

    The roads along ``main_axis`` (``x``: west-east) weigh ``main`` each, the others ``side``;
    only edges entering (sources) or leaving (destinations) the network carry weight, so every
    trip runs from the fringe to the fringe, as with ``--fringe-factor max``.
    """

    main: float
    side: float
    main_axis: Literal["x", "y"] = "x"


@dataclass(frozen=True)
class Demand:
    """One ``randomTrips.py`` run, written to its own route file."""

    kind: Literal["vehicles", "pedestrians"]
    prefix: str
    """Id prefix of the generated vehicles or persons (``veh``, ``ped``)."""
    seed: int
    rates_per_h: tuple[float, ...]
    """Insertion rates (per hour), one per equal slice of the hour: one value is a constant
    demand, several make it vary over time (``--insertion-rate r1 r2 ...``)."""
    fringe_factor: str | None = None
    """``--fringe-factor`` (``max`` or a number); None with :attr:`weights`."""
    weights: FringeWeights | None = None
    extra: tuple[str, ...] = ()

    @property
    def mean_rate_per_h(self) -> float:
        """The mean insertion rate over the hour."""
        return sum(self.rates_per_h) / len(self.rates_per_h)


@dataclass(frozen=True)
class Recipe:
    """Everything that makes one scenario."""

    name: str
    summary: str
    net: NetRecipe
    demands: tuple[Demand, ...]
    begin_s: int = 0
    end_s: int = HOUR_S
    time_to_teleport_s: int = 300
    sim_seed: int = 42


_VEHICLE_OPTIONS: tuple[str, ...] = (
    "--vehicle-class",
    "passenger",
    # Vehicles enter on the lane their route needs, at the speed the road allows: no
    # artificial lane changes or slow starts at the network's edge.
    "--trip-attributes",
    'departLane="best" departSpeed="max"',
    # Departure times drawn at random (from the seed) within each slice instead of evenly
    # spaced: arrivals at the stop line bunch as in real traffic.
    "--random-depart",
)

_PEDESTRIAN_OPTIONS: tuple[str, ...] = (
    "--vclass",
    "pedestrian",
    "--random-depart",
    "--random-departpos",
    "--random-arrivalpos",
    "--min-distance",
    "150",
)


def _single_junction_net() -> NetRecipe:
    # One four-arm junction: one lane each way on every arm plus a 70 m left-turn pocket on
    # every approach (the right turn shares the through lane). Arms are 300 m long.
    return NetRecipe(
        "netgenerate",
        (
            "--grid",
            "--grid.number",
            "1",
            "--grid.attach-length",
            "300",
            "--default.lanenumber",
            "1",
            "--turn-lanes",
            "1",
            "--turn-lanes.length",
            "70",
            "--default.speed",
            URBAN_SPEED_MS,
            "--default.junctions.type",
            "priority",
            "--tls.set",
            "A0",
            *TLS_OPTIONS,
            *COMMON_NET_OPTIONS,
        ),
    )


def _corridor_net() -> NetRecipe:
    # An arterial of five signalised junctions 300 m apart, two lanes each way plus a 60 m
    # left-turn pocket at every approach; the side streets are 250 m stubs.
    return NetRecipe(
        "netgenerate",
        (
            "--grid",
            "--grid.x-number",
            "5",
            "--grid.y-number",
            "1",
            "--grid.x-length",
            "300",
            "--grid.attach-length",
            "250",
            "--default.lanenumber",
            "2",
            "--turn-lanes",
            "1",
            "--turn-lanes.length",
            "60",
            "--default.speed",
            URBAN_SPEED_MS,
            "--default.junctions.type",
            "priority",
            "--tls.set",
            "A0,B0,C0,D0,E0",
            *TLS_OPTIONS,
            *COMMON_NET_OPTIONS,
        ),
    )


def _grid_net() -> NetRecipe:
    # 3×3 signalised junctions 200 m apart, one lane each way plus a 50 m left-turn pocket.
    return NetRecipe(
        "netgenerate",
        (
            "--grid",
            "--grid.number",
            "3",
            "--grid.length",
            "200",
            "--grid.attach-length",
            "200",
            "--default.lanenumber",
            "1",
            "--turn-lanes",
            "1",
            "--turn-lanes.length",
            "50",
            "--default.speed",
            URBAN_SPEED_MS,
            "--default.junctions.type",
            "priority",
            "--tls.set",
            "A0,A1,A2,B0,B1,B2,C0,C1,C2",
            *TLS_OPTIONS,
            *COMMON_NET_OPTIONS,
        ),
    )


def _irregular_net() -> NetRecipe:
    # Hand-written: a five-arm skewed junction C and a T-junction D 70 m east of it, both
    # under one traffic light ``CD``; sidewalks everywhere and guessed crossings. SUMO's
    # default crossing times stay: with --tls.crossing-min.time 6 netconvert drops the
    # all-pedestrian stage, and the crossings over the north-east arm and over C2D at D are
    # never green (the 'served' rule of tls_rules catches that).
    return NetRecipe(
        "netconvert",
        (
            "--node-files",
            "irregular.nod.xml",
            "--edge-files",
            "irregular.edg.xml",
            "--crossings.guess",
            *TLS_OPTIONS,
            *COMMON_NET_OPTIONS,
        ),
        inputs=("irregular.nod.xml", "irregular.edg.xml"),
    )


# Fringe weights 3:1 come out as about 2.2:1 per approach: randomTrips redraws the invalid
# (U-turn) pairs, which are likelier for the heavier arms.
_MAIN_HEAVY = FringeWeights(main=3.0, side=1.0)

# Peak shape of ``single-peaked``: twelve 5-minute slices rising to a 10-minute peak at
# 25–35 min and falling back (veh/h).
_PEAK_PROFILE: tuple[float, ...] = (
    500.0,
    700.0,
    950.0,
    1250.0,
    1550.0,
    1850.0,
    1850.0,
    1550.0,
    1250.0,
    950.0,
    700.0,
    500.0,
)

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="single-light",
            summary="one four-arm junction, light demand",
            net=_single_junction_net(),
            demands=(
                Demand(
                    "vehicles",
                    "veh",
                    seed=101,
                    rates_per_h=(360.0,),
                    weights=FringeWeights(main=2.0, side=1.0),
                    extra=_VEHICLE_OPTIONS,
                ),
            ),
        ),
        Recipe(
            name="single-heavy",
            summary="the same junction near saturation (~0.9), the main road twice the side road",
            net=_single_junction_net(),
            demands=(
                Demand(
                    "vehicles",
                    "veh",
                    seed=102,
                    rates_per_h=(1650.0,),
                    weights=_MAIN_HEAVY,
                    extra=_VEHICLE_OPTIONS,
                ),
            ),
        ),
        Recipe(
            name="single-peaked",
            summary="the same junction, demand rising to a peak mid-hour and falling",
            net=_single_junction_net(),
            demands=(
                Demand(
                    "vehicles",
                    "veh",
                    seed=103,
                    rates_per_h=_PEAK_PROFILE,
                    weights=_MAIN_HEAVY,
                    extra=_VEHICLE_OPTIONS,
                ),
            ),
        ),
        Recipe(
            name="corridor",
            summary="five signalised junctions 300 m apart on an arterial, two lanes each way",
            net=_corridor_net(),
            demands=(
                Demand(
                    "vehicles",
                    "veh",
                    seed=104,
                    rates_per_h=(3000.0,),
                    weights=FringeWeights(main=12.0, side=1.0),
                    extra=_VEHICLE_OPTIONS,
                ),
            ),
        ),
        Recipe(
            name="grid",
            summary="3×3 signalised grid, moderate demand",
            net=_grid_net(),
            demands=(
                Demand(
                    "vehicles",
                    "veh",
                    seed=105,
                    rates_per_h=(1500.0,),
                    fringe_factor="max",
                    extra=_VEHICLE_OPTIONS,
                ),
            ),
        ),
        Recipe(
            name="irregular",
            summary="a five-arm skewed junction and a T-junction under one light, with crossings",
            net=_irregular_net(),
            demands=(
                Demand(
                    "vehicles",
                    "veh",
                    seed=106,
                    rates_per_h=(800.0,),
                    fringe_factor="max",
                    extra=_VEHICLE_OPTIONS,
                ),
                Demand(
                    "pedestrians",
                    "ped",
                    seed=206,
                    rates_per_h=(300.0,),
                    extra=_PEDESTRIAN_OPTIONS,
                ),
            ),
        ),
    )
}
