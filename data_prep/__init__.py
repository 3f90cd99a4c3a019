"""Tools that build datasets (real episodes, embedded synthetic sets, token sets)."""
