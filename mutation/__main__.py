"""``python -m mutation``: see :mod:`mutation.runner`."""

from .runner import main

raise SystemExit(main())
