"""The requests 3D Slicer's MONAI Label module sends, as that module builds them.

Read from Project-MONAI/MONAILabel at commit ``058ddfc45ac52c2cae7783e2cadac0efeb2a9647`` (0.8.5-29,
2025-12-23), ``plugins/slicer/MONAILabel/MONAILabel.py`` (the module) and ``MONAILabelLib/client.py`` (its copy of
``monailabel.client.MONAILabelClient``, which the tests use to send them). Line numbers refer to that commit.
Nothing here is the module's code: each function states the shape of one request and where it was read.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

MODULE_COMMIT = "058ddfc45ac52c2cae7783e2cadac0efeb2a9647"

# getParamsFromConfig (l. 907-915): the /info section a model, trainer or strategy is listed under
_SECTIONS = {"infer": "models", "train": "trainers", "activelearning": "strategies", "scoring": "scoring"}


def config_params(info: dict, section: str, name: str) -> dict:
    """The config values of ``name`` in /info, first choice of each list (``getParamsFromConfig``)."""
    config = info.get(_SECTIONS.get(section, section), {}).get(name, {}).get("config", {})
    return {k: v[0] if isinstance(v, list) else v for k, v in config.items()}


def result_format(params: dict) -> dict:
    """``MONAILabelLogic.infer`` (l. 2468-2475) asks every result as a uint8 ``.nrrd``."""
    return {**params, "result_extension": ".nrrd", "result_dtype": "uint8"}


def is_multi_label(info: dict, model: str) -> bool:
    """l. 696-698: a ``deepedit`` model with labels puts the module in multi-label mode (landmarks per segment)."""
    m = info["models"][model]
    return m.get("type") == "deepedit" and len(m.get("labels")) > 0


def click_params(
    info: dict,
    model: str,
    label: str,
    landmarks: Dict[str, List[List[int]]],
    foreground: Sequence[Sequence[int]] = (),
    background: Sequence[Sequence[int]] = (),
    roi: Optional[List[int]] = None,
    reset_state: bool = False,
    slice_index: Optional[int] = None,
    multi_label: Optional[bool] = None,
) -> dict:
    """The params of one ``onClickDeepgrow`` request (l. 1669-1779), before the client adds ``client_id``.

    Multi-label mode (l. 1726-1743): ``{name: landmarks of the segment named name}`` for every name of /info's
    app-level ``labels``, plus ``label``. Otherwise (l. 1744-1765): ``{"label", "foreground", "background"}``
    (for a 2D model only the clicks on the current slice). Then ``label``, the model's config params, ``roi``
    when an ROI is placed, ``slice`` for 2D models, ``reset_state`` after a reset (l. 1766-1775), and the result
    format (l. 2473-2474). ``landmarks`` is each segment's point list (IJK voxels, rounded, l. 940-961).
    ``multi_label`` overrides the mode the module derives from /info (to send the other form to the same model)."""
    is_3d = info["models"][model].get("dimension", 3) != 2
    if is_multi_label(info, model) if multi_label is None else multi_label:
        params: dict = {name: [list(p) for p in landmarks.get(name, [])] for name in info.get("labels", [])}
        params["label"] = label
    else:
        fg, bg = [list(p) for p in foreground], [list(p) for p in background]
        if not is_3d and slice_index:
            fg, bg = [p for p in fg if p[2] == slice_index], [p for p in bg if p[2] == slice_index]
        params = {"label": label, "foreground": fg, "background": bg}
    params["label"] = label
    params.update(config_params(info, "infer", model))
    if roi:
        params["roi"] = list(roi)
    if not is_3d:
        params["slice"] = slice_index
    if reset_state:
        params["reset_state"] = True
    return result_format(params)


def save_label_params(segments: Sequence[str], model: str) -> dict:
    """``onSaveLabel`` (l. 1549-1581): one ``label_info`` entry per saved segment (``idx`` counts every segment,
    background and scribbles included) and the segmentation model selected; sent without a tag (``final``)."""
    label_info = [
        {"name": name, "idx": idx + 1}
        for idx, name in enumerate(segments)
        if name not in ("background", "foreground_scribbles", "background_scribbles")
    ]
    return {"label_info": label_info, "model": model}
