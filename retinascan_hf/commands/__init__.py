"""Sub-commands of the `retinascan` console script that belong to no larger feature area."""
