"""Audio in: decode files, resample, sanitize, and the mel frontend (the definition the trainer shares)."""
