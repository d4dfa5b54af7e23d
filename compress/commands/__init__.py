"""What the command line's commands do beyond parsing options (search, bench, eval, sensitivity):
the top of the house, above the search, the report and the benchmarks."""
