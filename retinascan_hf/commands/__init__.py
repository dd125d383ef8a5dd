"""The sub-commands of the `retinascan` console script: one module per sub-command, each exposing
`register(subparsers)`; `retinascan_hf.cli` only wires them together. They parse arguments and call the
library; no logic lives here."""
