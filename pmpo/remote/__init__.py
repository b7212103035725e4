"""Scoring through an OpenAI-compatible completions server: echo the whole text, read its prompt log-probabilities.

`RemoteScorer` is a scorer like the in-process one (`pmpo.scoring.loss.BaseScorer`); a self-check
(`pmpo.remote.check`) refuses a server whose prompt log-probabilities are missing or implausible before any loss
is computed with them.
"""

from pmpo.remote.client import CompletionsClient, RemoteError
from pmpo.remote.scorer import RemoteScorer

__all__ = ["CompletionsClient", "RemoteError", "RemoteScorer"]
