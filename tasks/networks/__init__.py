"""Model architectures voxflow defines itself (a network with no installable upstream package)."""
