"""``python -m cds_service``: the same command line as ``cds-service``.

Run with a Python that lacks the dependencies (the system's, outside ``.venv/``), it says how to set them up
instead of ending in a traceback.
"""

import sys

SET_UP = (
    "error: {python} lacks {module!r}, which cds_service needs; it runs in the project's .venv/.\n"
    "  make run                         creates .venv/ (first use) and starts the service in dev mode\n"
    "  . .venv/bin/activate             then: cds-service --help   (or: .venv/bin/cds-service --help)\n"
    "  (by hand: python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
)


def run() -> None:
    try:
        from cds_service.cli import main

        main(prog_name="cds-service")
    except ModuleNotFoundError as error:
        if not error.name or error.name.split(".")[0] == "cds_service":
            raise
        print(SET_UP.format(python=sys.executable, module=error.name), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
