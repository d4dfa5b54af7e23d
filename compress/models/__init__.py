"""Model loading, fingerprints and artifacts."""
