"""The tag history's reading side: queries and airplay segments over what ``sinks.history`` writes."""
