"""Devices and processes: the mesh and its logical-axis rules, multi-host start-up (mesh.py),
what the processes of a run exchange (multihost.py), and stacked micro-batches placed on the mesh
as one global batch (placement.py)."""
