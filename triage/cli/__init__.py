"""The `triage` subcommands, one module per group.

Modules here import only typer at the top: anything heavy (settings, scikit-learn, IMAP) is
imported inside the command function, so `triage --help` stays fast.
"""
