"""Custom TFX artifact types.

KFP v2 imports artifact classes by TYPE_NAME, which must match
`^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$`; `tfx_nsl.Graph` is
therefore re-exported from the package root.
"""
from tfx.types.artifact import Artifact


class Graph(Artifact):
  """A similarity or explicit graph in NSL's TSV edge format.

  Payload: sharded `source<TAB>target<TAB>weight` files (`edges-*.tsv`)
  readable by `nsl.tools`, plus `stats.json` with graph statistics.
  """
  TYPE_NAME = 'tfx_nsl.Graph'
  # Sizes ride as custom properties `num_nodes` / `num_edges`: TFX's KFP v2
  # compiler rejects custom artifact types that declare PROPERTIES.
