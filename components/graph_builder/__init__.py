"""GraphBuilder component."""
from tfx_nsl.components.graph_builder.component import GraphBuilder
