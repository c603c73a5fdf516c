"""``python -m hanzo_tasks.ctl``: the same as the ``tasksctl`` console script."""

from __future__ import annotations

import sys

from hanzo_tasks.ctl.cli import main

sys.exit(main())
