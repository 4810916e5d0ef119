"""CDS Hooks 2.0 service: tacrolimus for lupus nephritis (pregnancy, salvage context, nephrotoxicity)."""

__version__ = "0.1.0"


def create_app(*args, **kwargs):
    """The WSGI app; see ``cds_service.app.create_app``."""
    from cds_service.app import create_app as factory

    return factory(*args, **kwargs)
