"""Image records as imaged presents them: listing with sizes, naming and aliases, removal."""
