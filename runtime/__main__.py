"""`python -m runtime` is the same as the `sparse-runtime` console script."""

from runtime.cli import main

raise SystemExit(main())
