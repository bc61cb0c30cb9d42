"""The one report renderer of tfedge: self-contained HTML pages with inline SVG charts.

Every ``report.html`` (``optimize``, ``search``, ``ota fleet``) is built from these pieces,
so they look alike and open offline from a file: inline CSS, no script, no network, no
plotting library. ``html`` holds the page and its tables, ``svg`` the charts.
"""

from tfedge.render.html import page, section, table
from tfedge.render.svg import bar_chart

__all__ = ["bar_chart", "page", "section", "table"]
