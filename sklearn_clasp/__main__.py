"""``python -m sklearn_clasp``: the ``clasp`` command line (see :mod:`sklearn_clasp.cli`)."""

if __name__ == "__main__":
    from .cli import main

    raise SystemExit(main())
