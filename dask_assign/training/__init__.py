"""Learning the scorer's weights from labeled runs (evaluated leave one run out)."""
