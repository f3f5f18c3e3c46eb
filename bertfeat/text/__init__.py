"""Text: sentences (NLTK Punkt) and, for --add_bert, word pieces and windows."""
