"""Generation, mel inversion, scoring and reports."""
