"""cxr core library: chest X-ray retrieval by image similarity.

Data flows imaging -> embedding -> index, composed by pipeline. Shells (cli, workers, api) call pipeline.
"""

__version__ = "0.1.0"
