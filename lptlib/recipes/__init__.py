"""Recipes: each method builds what the one training loop (`lptlib.engine.fit`) needs from its config section.

- `pretrain`: the miniature foundation models (`pretrain` section);
- `vpt_study`: the preliminary VPT study, Table 1 runs and the feature analysis (`vpt_study`);
- `lpt`: LPT's two stages (`lpt`);
- `tea`: one member of the TEA ablation matrix (`tea`);
- `lptpp`: LPT++'s three phases and its MoE scorer (`lptpp`; it reuses the `lpt` module settings).
"""
