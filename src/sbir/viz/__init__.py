"""Figures: retrieval grids (query sketch, top-k photos, true match outlined) and training curves."""

from sbir.viz.curves import best_epoch, plot_columns, plot_training_curves, read_metrics_csv
from sbir.viz.grid import MATCH_COLOUR, grid_layout, retrieval_grid, write_retrieval_grid

__all__ = [
    "MATCH_COLOUR",
    "best_epoch",
    "grid_layout",
    "plot_columns",
    "plot_training_curves",
    "read_metrics_csv",
    "retrieval_grid",
    "write_retrieval_grid",
]
