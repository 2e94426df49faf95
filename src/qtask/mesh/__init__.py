"""The mesh of the `004` seed: service nodes and a coordinator over py-libp2p."""
