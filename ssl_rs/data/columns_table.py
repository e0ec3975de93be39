"""``python -m ssl_rs.data.columns_table`` prints the table of per-sample columns that
``docs/data_format.md`` holds, generated from :data:`ssl_rs.data.columns.COLUMNS`.

A module of its own because nothing imports it: ``python -m`` on a module that its package
already imported (``ssl_rs.data`` imports ``columns`` through ``layout``) runs a second copy of it
and says so with a RuntimeWarning.
"""

from __future__ import annotations

from .columns import markdown_table

if __name__ == "__main__":  # pragma: no cover - run by hand to update the docs; a test runs it too
    print(markdown_table())
