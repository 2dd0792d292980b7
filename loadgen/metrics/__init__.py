"""What a run measured: HDR latency histograms per phase, outcome counts, and
per-second series; mergeable across workers exactly."""
