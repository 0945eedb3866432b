"""The worker's per-record edge: the batch processor (messages in, facts folded, rows and output
messages out) and the encodings on its path (message framing, column encoders, the output
topics' JSON). Compiled with mypyc like pipeline/core/ (setup.py compiles the folder).
"""
