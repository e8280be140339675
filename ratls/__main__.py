"""``python -m ratls``: the same as the ``ratls`` command."""

from __future__ import annotations

import sys

from ratls.cli import main

sys.exit(main())
