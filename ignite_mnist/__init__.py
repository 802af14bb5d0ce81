"""ignite-mnist: MNIST digit classifiers trained and managed as experiments on PyTorch-Ignite.

Importing the package stays cheap: torch and ignite are imported by the modules that need them.
"""

__version__ = "0.1.0"
