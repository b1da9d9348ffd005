"""``python -m pixelbyte_async`` runs the CLI."""

from ._cli import main


raise SystemExit(main())
