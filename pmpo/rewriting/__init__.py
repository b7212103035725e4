"""Rewriting: hard examples, rewrite requests, the rewriter backends, and parsing their replies."""
