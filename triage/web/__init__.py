"""The web console (`triage web`): lead queue, review, templates, decisions, dashboard.

A separate process over the same store as the daemon; it never holds mailbox credentials and
calls the same domain functions as the CLI. `app.build_app` makes the Starlette application.
"""
