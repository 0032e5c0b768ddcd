"""dirscope: are a network's units special, or is any direction in its activation space as meaningful?"""

__version__ = "0.1.0"
