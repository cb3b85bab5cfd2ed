"""Measurement primitives below the recipes: accuracy by shot group (`metrics`), feature geometry (`analysis`:
LDA, the distance ratio gamma, k-NN) and the statistics of seeds (`stats`: paired intervals, verdicts). The
reading code on top (`lptlib.report`: tables, claims, figures) applies them to the metrics files."""
