"""The console's pages, one module per area; `PAGES` is every route they serve."""

from __future__ import annotations

from triage.web.app import Page
from triage.web.views import leads, review

PAGES: list[Page] = []
PAGES += leads.PAGES
PAGES += review.PAGES
