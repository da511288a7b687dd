"""Training: the config-to-model glue, state, pmap-style steps, the loop, checkpoints, mesh and run files."""
