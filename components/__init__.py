"""TFX components of tfx-nsl (GraphBuilder, GraphAugmentation) land here."""
