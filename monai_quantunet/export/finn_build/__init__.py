"""The FINN build of the exported QuantU-Net, copied whole into the FINN build folder (``finn_build/``).

The folder's ``build.py`` runs :func:`.build.main` (under FINN's own Python) and its ``host.py`` :func:`.host.main`
(on the board). One concept per module:

* :mod:`.targets`: boards, FPGA parts, their resources and the build's budget;
* :mod:`.steps`: the U-Net's custom FINN build steps and their order;
* :mod:`.folding`: the folding optimiser (pure Python over the layers' attributes);
* :mod:`.fifo_model` / :mod:`.fifos`: the FIFO model and its application to a FINN graph;
* :mod:`.verification`: the folded graph's integer output against the streamlined graph's;
* :mod:`.host_tail`: the end of the network the host computes; :mod:`.host`: the board's program;
* :mod:`.build`: the command line; :mod:`.commits`: the FINN and qonnx commits it is checked with.

Modules that need FINN import it inside their functions: the package imports without FINN (qonnx is needed by
:mod:`.fifos` and the modules that use it).
"""

from pathlib import Path

from .errors import UNetBuildError
from .targets import BOARD_PARTS, MAX_UTILIZATION, fifo_ram_style, part_resources, resolve_part

__all__ = ["BOARD_PARTS", "FOLDER", "MAX_UTILIZATION", "UNetBuildError", "fifo_ram_style", "part_resources",
           "resolve_part"]

FOLDER = Path(__file__).resolve().parent.parent  # in a FINN build folder: the folder, where build.py runs
