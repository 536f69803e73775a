"""Generalizable feed-forward predictors (UniSem, GSemSplat); see the feed-forward issues."""
