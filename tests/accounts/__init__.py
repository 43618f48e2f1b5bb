"""People and access: sign-up, logins, sessions, invites, API keys, tokens, the audit log, web security."""
