"""Live audio: the per-source pipeline (mel frames -> ring buffer -> model -> smoother -> messages)."""
