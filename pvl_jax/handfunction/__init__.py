"""Hand function from lesion masks: the logistic-regression baseline."""
