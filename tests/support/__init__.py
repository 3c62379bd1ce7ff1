"""Helpers shared by tailsift's tests: job and config factories, message builders, metric names."""
