"""The PMPO loop: settings, the steps it delegates, selection, metering and the result."""
