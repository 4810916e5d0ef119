"""``python -m cds_service``: the same command line as ``cds-service``."""

from cds_service.cli import main

if __name__ == "__main__":
    main(prog_name="cds-service")
