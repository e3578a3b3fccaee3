"""Models and the methods that adapt them: packaged assets (assets), loading by source and the meta
skeletons used for counting (loading), the tiny test tokenizer, projection codes resolved to module
names (projections), adapter methods through peft (methods), token injection (tokens), several runs' adapters on one
frozen base (adapter_pack, pack_products, grouped_mm) and the exact trainable-parameter arithmetic behind budgets (params).

May import: lorasweep.config and the leaves (errors, console, compat, locks). Not tasks/ (a peer).
"""
