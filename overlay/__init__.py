"""The WireGuard overlay: the router is the hub; each approved host is one peer with one address."""
