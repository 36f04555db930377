"""Files on disk: the checkpoint layout (layout.py) and the one way to write them atomically (atomic.py).
Below every other subpackage: it imports none of them, so model/, data/ and training/ can all use it."""
