"""The jobs: one module each (`sentences`: --add_sent_tokenized, `add_bert`: --add_bert), composed
from the layers below them and called by api.py."""
