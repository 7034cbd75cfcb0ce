"""Width applied to layers: width configs, slimmable layers, training kernels, and
folding a width into a plain dense network."""
