"""``python -m armodel_fast``: see :mod:`armodel_fast.cli`."""
from .cli import main

raise SystemExit(main())
