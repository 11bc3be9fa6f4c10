"""Where the bundled data lives: found through the package itself, so an installed copy finds it too.

``d2pruner/assets/`` holds the example photographs with their referring expressions and hand-placed boxes
(``examples/``), the photographs priors are calibrated from (``calibration/``), the shipped priors
(``priors/``) and the sources and licences of every image (``SOURCES.md``).
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
#: example photographs + ``examples.json`` (prompt, referring expression, box per photo)
EXAMPLES_DIR = ASSETS_DIR / "examples"
#: the photographs the natural priors are calibrated from
CALIBRATION_DIR = ASSETS_DIR / "calibration"
#: the priors shipped with the package (read-only on an installed copy or a Space)
BUNDLED_PRIORS_DIR = ASSETS_DIR / "priors"
