"""PuzzleLib's import paths for cybn's batch normalisation: thin aliases of cybn objects, no second implementation."""
