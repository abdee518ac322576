"""careloop stage."""
