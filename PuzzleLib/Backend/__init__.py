"""PuzzleLib.Backend: gpuarray and Dnn over cybn."""
