"""Traffic signals: intersection model, phase engine, safety monitor, strategies and the shell."""
