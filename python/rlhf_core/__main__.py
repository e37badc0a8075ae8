"""``python -m rlhf_core``: the ``rlhf-core`` command line (see :mod:`rlhf_core.cli`)."""

from rlhf_core.cli import main

raise SystemExit(main())
