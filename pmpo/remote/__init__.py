"""Scoring through an OpenAI-compatible completions server: echo the whole text, read its prompt log-probabilities.

`RemoteScorer` has the surface of `pmpo.scoring.loss.Scorer`; a self-check (`pmpo.remote.check`) refuses a server whose
prompt log-probabilities are missing or implausible before any loss is computed with them.
"""

from pmpo.remote.client import Endpoint, RemoteError
from pmpo.remote.scorer import RemoteScorer

__all__ = ["Endpoint", "RemoteError", "RemoteScorer"]
