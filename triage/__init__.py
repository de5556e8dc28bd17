"""triage: answers a company's inbound email inquiries.

Importing the package does no work: heavy modules (scikit-learn, the IMAP client) are imported only
by the commands that need them, so `triage --help` stays fast.
"""

__version__ = "0.1.0"
