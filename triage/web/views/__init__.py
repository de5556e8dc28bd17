"""The console's pages, one module per area; `PAGES` is every route they serve."""

from __future__ import annotations

from triage.web.app import Page
from triage.web.views import admin, dashboard, leads, review, templates

PAGES: list[Page] = [
    *leads.PAGES,
    *review.PAGES,
    *dashboard.PAGES,
    *templates.PAGES,
    *admin.PAGES,
]
