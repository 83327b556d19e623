"""`python -m autoresearch` runs the command-line interface."""

from autoresearch.cli import main

raise SystemExit(main())
