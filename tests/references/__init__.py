"""Our own transcriptions, in stock PyTorch / NumPy, of the official code each vosjax component is
checked against (the official models, losses and the DAVIS evaluation). Not tests."""
