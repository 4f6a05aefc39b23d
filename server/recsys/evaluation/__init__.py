"""Offline evaluation of what `recsys train` produces, and of the served path against it."""
