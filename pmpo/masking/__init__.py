"""Segment masking: the prompt's removable units and the loss change when each is masked out."""
