"""The hostile message corpus (see README.md); make_corpus.py writes its generated part."""
