"""FINN build of the exported QuantU-Net (copied into the FINN build folder as ``build.py``).

Run inside FINN's Docker container (FINN ``dev`` branch, qonnx commit f5c9819):

    python build.py [--steps-until STEP]

FINN's stock ``step_streamline`` / ``step_convert_to_hw`` leave a U-Net's max-pools, concatenations,
transposed convs and skip forks off the hardware; the custom steps below (the repository's DESIGN.md,
"U-Net rules") move every scale past them on the NCHW graph, go channels-last, then convert the
upsampling, concat and fork layers explicitly. The final transpose and the logits' scale and bias stay
on the host (``step_create_dataflow_partition`` leaves them in the parent model).

This file imports FINN only inside functions, so it compiles and imports without FINN installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_STREAMLINE_ROUNDS = 20


def _transform_to_fixed_point(model, transformations, max_rounds: int = MAX_STREAMLINE_ROUNDS):
    """Apply ``transformations`` in order until the serialized graph stops changing."""
    for _ in range(max_rounds):
        before = model.model.SerializeToString()
        for t in transformations:
            model = model.transform(t)
        if model.model.SerializeToString() == before:
            return model
    raise RuntimeError(f"streamlining did not reach a fixed point in {max_rounds} rounds")


def step_unet_streamline(model, cfg):
    """NCHW streamlining: move the skip branch's scales past fork, max-pool, up-conv and concat."""
    import finn.transformation.streamline.reorder as reorder
    from finn.transformation.streamline import Streamline
    from qonnx.transformation.infer_datatypes import InferDataTypes

    model = _transform_to_fixed_point(
        model,
        [
            reorder.MoveLinearPastFork(),
            reorder.MoveMulPastMaxPool(),
            reorder.MoveScalarLinearPastInvariants(),
            reorder.MoveScalarMulPastConvTranspose(),
            reorder.MoveMulPastJoinConcat(),
            reorder.MoveAddPastJoinConcat(),
            Streamline(),
        ],
    )
    return model.transform(InferDataTypes())


def step_unet_channels_last(model, cfg):
    """Go channels-last: lower convs, pad transposed convs, NHWC pools/resizes, absorb the transposes."""
    import finn.transformation.streamline.absorb as absorb
    import finn.transformation.streamline.reorder as reorder
    from finn.transformation.fpgadataflow.infer_pixel_padding_deconv import InferPixelPaddingDeconv
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.transformation.make_input_chanlast import MakeInputChannelsLast

    model = model.transform(MakeInputChannelsLast())
    model = model.transform(LowerConvsToMatMul())
    model = model.transform(InferPixelPaddingDeconv())
    model = _transform_to_fixed_point(
        model,
        [
            reorder.MakeMaxPoolNHWC(),
            absorb.AbsorbTransposeIntoMultiThreshold(),
            reorder.MoveTransposePastFork(),
            reorder.MoveTransposePastJoinConcat(),
            reorder.MakeScaleResizeNHWC(),
            absorb.AbsorbConsecutiveTransposes(),
        ],
    )
    model = model.transform(RoundAndClipThresholds())
    return model.transform(InferDataTypes())


def step_unet_convert_to_hw(model, cfg):
    """Convert upsampling, concat and skip forks explicitly (not in the stock step), then the rest."""
    import finn.transformation.fpgadataflow.convert_to_hw_layers as to_hw
    from finn.builder.build_dataflow_steps import step_convert_to_hw

    model = model.transform(to_hw.InferUpsample())
    model = model.transform(to_hw.InferConcatLayer())
    model = model.transform(to_hw.InferDuplicateStreamsLayer())
    model = model.transform(to_hw.InferAddStreamsLayer())
    return step_convert_to_hw(model, cfg)


# step_target_fps_parallelization is left out: it crashes on StreamingConcat; folding_config.json sets PE/SIMD.
UNET_STEPS = [
    "step_qonnx_to_finn",
    "step_tidy_up",
    step_unet_streamline,
    step_unet_channels_last,
    step_unet_convert_to_hw,
    "step_create_dataflow_partition",
    "step_specialize_layers",
    "step_apply_folding_config",
    "step_minimize_bit_width",
    "step_generate_estimate_reports",
    "step_hw_codegen",
    "step_hw_ipgen",
    "step_set_fifo_depths",
    "step_create_stitched_ip",
    "step_measure_rtlsim_performance",
    "step_out_of_context_synthesis",
    "step_synthesize_bitfile",
    "step_make_pynq_driver",
    "step_deployment_package",
]


def step_name(step) -> str:
    return step if isinstance(step, str) else step.__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "dataflow_build_config.json"), help="build config JSON")
    parser.add_argument("--model", default=str(HERE / "model.onnx"), help="QONNX model")
    parser.add_argument("--steps-until", default=None, help="stop after this step (e.g. step_generate_estimate_reports)")
    args = parser.parse_args(argv)

    from finn.builder.build_dataflow import build_dataflow_cfg
    from finn.builder.build_dataflow_config import DataflowBuildConfig

    cfg = DataflowBuildConfig.from_json(Path(args.config).read_text())
    names = [step_name(s) for s in UNET_STEPS]
    last = names.index(args.steps_until) + 1 if args.steps_until else len(UNET_STEPS)
    cfg.steps = UNET_STEPS[:last]
    # paths in the config are relative to this folder
    for key in ("output_dir", "folding_config_file", "verify_input_npy", "verify_expected_output_npy"):
        value = getattr(cfg, key, None)
        if value and not Path(value).is_absolute():
            setattr(cfg, key, str(HERE / value))
    return build_dataflow_cfg(args.model, cfg)


if __name__ == "__main__":
    raise SystemExit(main())
