"""Long memory: TWIN-V2 hierarchical clustering of a history into cluster tokens (memory banks for the GSU)."""
