"""con2lib: the CON2 anomaly-detection method (context contrasting + content alignment)."""

__version__ = "0.1.0"
