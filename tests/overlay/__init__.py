"""The WireGuard overlay end to end in network namespaces, and peer ids."""
