"""Text: prompt templates, rendering a prompt and an example into the model's text, and tokenising it."""
