"""Geo regularizers, one file each, registered by name in ``ssl_rs.registry.REGULARIZERS``;
that registry imports every module of this package on first use, so none is imported here."""
