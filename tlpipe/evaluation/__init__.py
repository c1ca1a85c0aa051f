"""The evaluate stage's scores and pictures."""
