"""Layer 2 (beside data and model): what training optimises and how results are scored — the
CLIP-MUSED losses, the multi-label metrics and the paired statistics."""
