"""The run spec: a composed Hydra config validated into small typed objects, its run key, and the
projection codes (q k v o g u d) with each model family's module patterns. No torch: a bad config
is refused in milliseconds.

May import: the leaves (errors, console, compat, locks); today it uses errors alone.
"""
