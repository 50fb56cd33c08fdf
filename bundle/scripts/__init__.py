"""The bundle's own code, in the model zoo's ``scripts/`` convention.

Every config's ``imports`` starts with ``$import scripts``. In a packaged bundle
(``scripts/package_bundle.py`` of the project) this folder also holds a copy of the ``mssn_monai``
package, and importing ``scripts`` puts this folder first on ``sys.path``, so the configs' ``mssn_monai.*``
names resolve to that copy and the bundle runs with published packages only. ``import scripts`` needs the
bundle folder on ``sys.path``: run ``python -m monai.bundle ...`` from the bundle folder (as the zoo's
bundles are run), or add the folder to ``PYTHONPATH``; the zoo's ``verify_bundle.py`` adds it itself.

In the project's source tree this file is alone here and does nothing: the installed ``mssn_monai`` is
used. A ``mssn_monai`` imported before the config was read stays the one in use.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)

if (Path(_HERE) / "mssn_monai" / "__init__.py").is_file() and _HERE not in sys.path:
    sys.path.insert(0, _HERE)
