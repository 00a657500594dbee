"""Interactive refinement of a segmentation by clicks (the ``deepedit`` model of the MONAI Label app).

* :mod:`.clicks`: click parsing and mapping, click maps, the reach of a click, the robot user's click;
* :mod:`.guidance`: the inference side (current mask + clicks -> network inputs, the locality gate,
  :func:`refine_volume` on one file through the library's segmentation chain);
* :mod:`.training`: simulated-click training (dataset with the segmentation model's masks, mask perturbation,
  iterative click simulation) and its validation pieces, used by the bundle ``quantunet_interactive_tumor_seg``.
"""

from monai_quantunet.interactive.clicks import (
    DEFAULT_SIGMA,
    DEFAULT_SLICE_WEIGHTS,
    REACH_RADIUS,
    REACH_SLICES,
    ClickError,
    click_maps_3d,
    deepest_point,
    gaussian_disc,
    map_clicks,
    parse_clicks,
    reach_mask,
    reach_slices,
    robot_click,
)
from monai_quantunet.interactive.guidance import (
    CLICK_CORE_RADIUS,
    INPUT_CHANNELS,
    AddInteractionGuidanced,
    LocalityGated,
    example_inputs,
    ReachLimitedNetwork,
    directional_gate,
    locality_gate,
    AddAutoSegmentationd,
    click_items,
    refine_volume,
)
from monai_quantunet.interactive.training import (
    AddAutoMaskd,
    AddRobotClicksd,
    ClickRefinementInferer,
    ClickSimulation,
    GateByReachd,
    InteractionInputsd,
    RandPerturbMaskd,
    expand_input_channels,
    slice_transforms,
)

__all__ = [
    "DEFAULT_SIGMA", "DEFAULT_SLICE_WEIGHTS", "REACH_RADIUS", "REACH_SLICES", "INPUT_CHANNELS", "CLICK_CORE_RADIUS", "ClickError",
    "click_maps_3d", "deepest_point", "gaussian_disc", "map_clicks", "parse_clicks", "reach_mask", "reach_slices", "robot_click",
    "AddInteractionGuidanced", "LocalityGated", "ReachLimitedNetwork", "directional_gate", "locality_gate", "refine_volume",
    "AddAutoSegmentationd", "click_items", "example_inputs",
    "AddAutoMaskd", "AddRobotClicksd", "ClickRefinementInferer", "ClickSimulation", "GateByReachd",
    "InteractionInputsd", "RandPerturbMaskd", "expand_input_channels", "slice_transforms",
]
