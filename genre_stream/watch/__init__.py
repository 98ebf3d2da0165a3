"""The watch folder, one wing: the source that finds settled files, what was tagged, and the tagger."""
