"""The app's views, one per file; ``shared`` holds what every view needs (the chosen run, cached loads)."""
