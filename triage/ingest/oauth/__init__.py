"""OAuth2 sign-in for mailboxes: access tokens for IMAP and SMTP from a token provider.

A mailbox with `auth = "oauth2"` logs in with an access token (XOAUTH2 or OAUTHBEARER) instead of
a password. The token comes from a `TokenProvider` (see `tokens`); each provider knows one way of
getting tokens (a refresh token, client credentials, a service-account key) and saves every
rotated refresh token the moment it receives it.
"""
