"""``python -m labelsmooth`` (also what ``torchrun -m labelsmooth`` runs)."""

from .cli import main

raise SystemExit(main())
