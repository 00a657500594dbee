"""The library builds as a wheel holding every module the bundles' configs and the MONAI Label app import."""

import re
import subprocess
import sys
import zipfile

from conftest import REPO


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
