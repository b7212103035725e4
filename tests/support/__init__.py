"""Helpers only the tests use: tiny flow configs, and the driver scripts run as subprocesses."""
