"""NeuMeta hypernetworks: one implicit function from weight coordinates to weight values."""
