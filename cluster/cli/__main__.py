"""``python -m hanzo_tasks.cluster.cli``: the same as the ``tasksd`` command."""

import sys

from hanzo_tasks.cluster.cli.tasksd import main

sys.exit(main())
