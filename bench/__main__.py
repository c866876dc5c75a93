"""``python -m bench``: every benchmark, figures into ``bench-results.json``."""

from bench.delivery import main

raise SystemExit(main())
