"""Whole tracks: a file -> 30 s windows -> one result (``classify``, the watch folder's tagger, the library).

Only the shared rule lives here (stdlib only, so the configuration can import it); the work is in
``analysis`` (windows and the track result) and ``classify`` (the command's output).
"""

TRACK_HOP_SECONDS = 10.0  # seconds between the starts of a whole track's 30 s windows: classify, library scan, watch folders
