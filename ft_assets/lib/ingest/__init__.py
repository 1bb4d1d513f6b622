"""raw/<corpus>: which files a landing folder holds (landing) and how each format becomes rows (readers)."""
