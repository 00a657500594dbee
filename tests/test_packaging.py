"""The library builds as a wheel holding every module the bundles' configs and the MONAI Label app import."""

import json
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import BUNDLE, INTERACTIVE_BUNDLE, REPO


def imported_modules() -> set[str]:
    """``monai_quantunet.*`` modules named by the bundles' configs and imported by the app."""
    found = set()
    for path in list(REPO.glob("bundles/*/configs/*.json")) + list(REPO.glob("slicer_app/**/*.py")):
        text = path.read_text()
        found |= set(re.findall(r"(?:import|from)\s+(monai_quantunet(?:\.\w+)*)", text))
        found |= {m.rsplit(".", 1)[0] for m in re.findall(r'"_target_":\s*"(monai_quantunet(?:\.\w+)+)"', text)}
    return found


def test_wheel_holds_what_bundles_and_app_import(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("monai_quantunet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = imported_modules()
    assert {"monai_quantunet.networks", "monai_quantunet.inference", "monai_quantunet.checkpoint"} <= modules
    for module in modules:
        base = module.replace(".", "/")
        assert f"{base}.py" in names or f"{base}/__init__.py" in names, f"{module} is imported but not in {wheel.name}"


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_bundle_outside_the_repository(tmp_path):
    """``pip install <wheel>`` (with the constraints file) in a new virtualenv is all a MONAI user needs: the
    documented inference commands of both bundles (the interactive one with a clicks file) run from copies of
    the bundle folders outside the repository and write the same masks as the repository's environment."""
    import shutil

    import numpy as np
    import nibabel as nib

    from monai_quantunet.data import make_synthetic_dataset

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("monai_quantunet-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)],
                   check=True, timeout=1800)
    make_synthetic_dataset(tmp_path / "volumes", num_cases=1, shape=(64, 64, 8))
    images = sorted((tmp_path / "volumes").rglob("*.nii.gz"))
    image_dir = images[0].parent
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({images[0].name: {"foreground": [[32, 32, 4]], "background": [[2, 2, 1]]}}))
    runs = {"segmentation": (BUNDLE, []), "interactive": (INTERACTIVE_BUNDLE, ["--clicks_file", str(clicks)])}
    for kind, (source, extra) in runs.items():
        bundle = tmp_path / "elsewhere" / source.name  # a copy standing alone: no sibling bundle, no repository
        shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("runs", "eval", "data", "export"))
        masks = {}
        for name, exe in (("wheel", python), ("repo", sys.executable)):
            out = tmp_path / f"masks_{kind}_{name}"
            subprocess.run([str(exe), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                            "--dataset_dir", str(image_dir), "--output_dir", str(out), *extra],
                           cwd=bundle, check=True, timeout=900, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
            masks[name] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}
        assert masks["wheel"] and masks["wheel"].keys() == masks["repo"].keys(), kind
        for key in masks["wheel"]:
            np.testing.assert_array_equal(masks["wheel"][key], masks["repo"][key])
