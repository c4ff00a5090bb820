"""The cityctl controller: config, control loops, runtime, CLI."""
