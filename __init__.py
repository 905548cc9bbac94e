"""quantplan: the cheapest way to serve a language model under latency SLOs and a quality floor."""

__version__ = "0.1.0"
