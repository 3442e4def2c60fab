"""sbir: sketch-based image retrieval toolkit.

Architecture (see the folder tree):
  data/     datasets (one module per format), the one image loader, transforms
  models/   backbone registry (timm-style ``create_backbone``), heads, method wrappers
  losses/   NT-Xent, triplet, ... as small composable modules
  engine/   training loop, checkpoints, batch embedding
  metrics/  the one retrieval-metrics module
  index/    persistent embedding index and search
  serve/    REST API and web page
  cli.py    the ``sbir`` command
"""

from sbir.errors import SbirError

__version__ = "0.1.0"
__all__ = ["SbirError", "__version__"]
