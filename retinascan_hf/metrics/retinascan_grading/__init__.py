"""Folder of the `evaluate` metric script (a package only so that it ships with `retinascan_hf`)."""
