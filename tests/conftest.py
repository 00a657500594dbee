import os
from pathlib import Path

import pytest
import torch

from monai_quantunet.bundle import BUNDLE_NAME, INTERACTIVE_BUNDLE_NAME, checkout_bundle

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QUANTUNET_SHARED_DATA", REPO.parent / "shared" / "data"))
BUNDLE = checkout_bundle(BUNDLE_NAME, REPO)
INTERACTIVE_BUNDLE = checkout_bundle(INTERACTIVE_BUNDLE_NAME, REPO)

TINY = {"channels": [4, 8, 8, 16, 16], "spatial_size": [32, 32]}  # bundle overrides for a fast tiny network

torch.set_num_threads(min(2, torch.get_num_threads()))


def run_workflow(config_file, **override):
    """A bundle workflow the model zoo's way: ConfigWorkflow initialize -> run -> finalize."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=config_file, workflow_type=override.pop("workflow_type", None), **override)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test when it is absent (fresh clone without the data)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    from monai_quantunet.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_cases=6, shape=(48, 48, 8), num_validation=2)
    return root


@pytest.fixture(scope="session")
def finn_toolchain():
    """The FINN toolchain of ``$FINN_TOOLCHAIN`` or ``<repo>/.finn``; skips the test when there is none."""
    from monai_quantunet.export.finn_toolchain import TOOLCHAIN_ENV, FinnToolchain

    folder = os.environ.get(TOOLCHAIN_ENV) or REPO / ".finn"
    try:
        return FinnToolchain.from_folder(folder)
    except FileNotFoundError as e:
        pytest.skip(f"FINN toolchain not installed ({e})")


def check_zoo_metadata(bundle: Path) -> None:
    """The model zoo's metadata checks, offline: the schema (local copy under ../shared/zoo_schema; skips
    without it), the version in the changelog, and ``verify_net_in_out`` on the tiny network."""
    import json

    jsonschema = pytest.importorskip("jsonschema")
    from monai.bundle import verify_net_in_out

    configs = bundle / "configs"
    meta = json.loads((configs / "metadata.json").read_text())
    schema_path = SHARED_DATA.parent / "zoo_schema" / meta["schema"].rsplit("/", 1)[-1]
    if not schema_path.is_file():
        pytest.skip(f"schema copy not available at {schema_path}")
    jsonschema.validate(meta, json.loads(schema_path.read_text()))
    assert meta["version"] in meta["changelog"]
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), n=1, device="cpu", bundle_root=str(bundle),
                      channels=TINY["channels"])
