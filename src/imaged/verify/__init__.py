"""Image signature verification: policy, signature discovery, verifiers, trust roots, cache."""
