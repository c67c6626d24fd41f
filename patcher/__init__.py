"""Content format: chunking, packs, signed manifests, manifest diffs, binary deltas, publishing."""
