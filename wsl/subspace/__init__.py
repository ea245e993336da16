"""Universal subspace analysis: spectra of a zoo's tensors beside honest nulls, bases, compression."""
