"""The eval stage's measurements, one module each: held-out loss (`loss`), generation metrics
(`generation`), multiple-choice accuracy (`multiple_choice`), reward-model judgements
(`judge`) and the lm-evaluation-harness (`harness`); `examples` reads the data they share and
`run` runs them in an order that holds one model in memory at a time."""
