"""robustcaps: matrix capsules with EM routing against CNNs, on viewpoints and white-box attacks."""

__version__ = "0.1.0"
