"""The MNIST corner-shift baseline: data, shifted test sets and the experiment."""
