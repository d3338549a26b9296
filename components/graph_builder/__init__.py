"""GraphBuilder component and its search modes."""
from tfx_nsl.components.graph_builder.component import GraphBuilder
from tfx_nsl.components.graph_builder.params import Exact
from tfx_nsl.components.graph_builder.params import Lsh
from tfx_nsl.components.graph_builder.params import Partition
