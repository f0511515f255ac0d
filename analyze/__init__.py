"""Analysis on CPUs only: a store becomes a depth trace (contraction a, transport L per layer); traces are compared and reported."""
