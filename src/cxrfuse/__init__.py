"""cxrfuse."""
