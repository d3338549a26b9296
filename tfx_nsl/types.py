"""Custom TFX artifact types.

KFP v2 imports artifact classes by TYPE_NAME, which must match
`^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$`; `tfx_nsl.Graph` is
therefore re-exported from the package root.
"""
from tfx.types.artifact import Artifact, Property, PropertyType


class Graph(Artifact):
  """A similarity or explicit graph in NSL's TSV edge format.

  Payload: sharded `source<TAB>target<TAB>weight` files (`edges-*.tsv`)
  readable by `nsl.tools`, plus `stats.json` with graph statistics.
  """
  TYPE_NAME = 'tfx_nsl.Graph'
  PROPERTIES = {
      'num_nodes': Property(type=PropertyType.INT),
      'num_edges': Property(type=PropertyType.INT),
  }
