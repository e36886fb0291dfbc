"""Where data comes from and how a stage's result is kept: sources and decoding, derived versions, a stage's
record against its run, the published current result."""
