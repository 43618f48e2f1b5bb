"""A machine's life on the router: registration, approval, the dashboard, serving(), health checks, diagnostics."""
