"""Reading faces of a run directory for people: the HTML report and the blinded human study.

Like the scores, they read only the run directory, and never import torch.
"""

from .html import write_report
from .study import make_study, score_study

__all__ = ["make_study", "score_study", "write_report"]
