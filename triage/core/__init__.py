"""The values, settings, errors and small helpers every other part shares."""
