"""Sub-commands of the ``dhkd`` CLI (see :mod:`dhkd.cli`)."""
