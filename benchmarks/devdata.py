"""Where the benchmarks find the project's shared data: ``../shared/data`` beside the checkout,
or the folder named by the environment variable ``NTK_SHARED_DATA`` (e.g. a copy carried to a
GPU machine, see ``benchmarks/gpu_check.sh``)."""
import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("NTK_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")
IMAGES = SHARED_DATA / "images"


def dev_image_paths():
    """The dev images (``IMAGES/*.png``), sorted; exits with a clear message when there are none."""
    paths = sorted(IMAGES.glob("*.png"))
    if not paths:
        raise SystemExit(f"no dev images (*.png) in {IMAGES}; put ../shared/data beside the "
                         "checkout or set NTK_SHARED_DATA to a copy of it")
    return paths
