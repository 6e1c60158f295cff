"""Small helpers every layer may use: plain data, devices, torchrun ranks, plots, progress bars, benchmarks."""
