"""A plain float64 PyTorch evaluation of SPEC §3 (BERT- and RoBERTa-style): each window on its
own, never padded (windows of exactly equal length share one forward pass, which changes nothing
but the speed).

Deliberately independent of bertfeat's code: HF's tokenizer and model in float64, numpy math.
"""
import json

import numpy as np
import torch

AGG = {"mean": lambda x: x.mean(0), "median": lambda x: np.median(x, 0), "max": lambda x: x.max(0),
       "min": lambda x: x.min(0), "sum": lambda x: x.sum(0), "std": lambda x: x.std(0)}


class Reference:
    def __init__(self, model_path):
        from transformers import AutoModel, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path, attn_implementation="eager").double().eval()
        config = self.model.config
        self.n_layers = config.num_hidden_layers
        self.roberta = config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet", "modernbert")
        self.token_types = config.model_type not in ("distilbert", "mpnet", "modernbert")
        offset = config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet")  # positions start at pad + 1
        max_pos = config.max_position_embeddings - (config.pad_token_id + 1 if offset else 0)
        self.limit = (max_pos - 3) // 2
        self._cache = {}

    def window(self, a, b=None):
        """(ids, types, start of a, start of b) written out per family, not taken from bertfeat."""
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
        if b is None:
            return [cls] + a + [sep], [0] * (len(a) + 2), 1, None
        if self.roberta:  # <s> a </s></s> b </s>, one token type
            ids = [cls] + a + [sep, sep] + b + [sep]
            return ids, [0] * len(ids), 1, len(a) + 3
        return [cls] + a + [sep] + b + [sep], [0] * (len(a) + 2) + [1] * (len(b) + 1), 1, len(a) + 2

    def hidden(self, ids, types):
        """All layers' hidden states [n_layers, T, H] of one window (no padding)."""
        key = (tuple(ids), tuple(types))
        if key not in self._cache:
            self._forward([key])
        return self._cache[key]

    def _forward(self, keys):
        """Hidden states of windows of one length, in one unpadded forward pass."""
        extra = {"token_type_ids": torch.tensor([t for _, t in keys])} if self.token_types else {}
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([i for i, _ in keys]), **extra,
                             attention_mask=torch.ones(len(keys), len(keys[0][0]), dtype=torch.long),
                             output_hidden_states=True)
        states = torch.stack(out.hidden_states[1:], 0).numpy()  # [layers, windows, T, H]
        for n, key in enumerate(keys):
            self._cache[key] = states[:, n].copy()

    def prefetch(self, messages, no_context=False, batch_tokens=8192):
        """Compute the windows `messages` (lists of sentences) need, equal lengths together."""
        by_length = {}
        for sentences in messages:
            sents = self.pieces(sentences)
            if no_context:
                wins = [self.window([t]) for s in sents for t in s]
            else:
                wins = [self.window(s) for s in sents[:1] if len(sents) == 1]
                wins += [self.window(a, b) for a, b in zip(sents, sents[1:])]
            for ids, types, _, _ in wins:
                key = (tuple(ids), tuple(types))
                if key not in self._cache:
                    by_length.setdefault(len(ids), {})[key] = None
        for length, keys in by_length.items():
            keys, step = list(keys), max(1, batch_tokens // length)
            for k in range(0, len(keys), step):
                self._forward(keys[k:k + step])

    def pieces(self, sentences):
        out = []
        for s in sentences:
            ids = self.tok.encode(s, add_special_tokens=False)
            out.extend(ids[i:i + self.limit] for i in range(0, len(ids), self.limit) if ids)
        return out

    def token_vectors(self, sentences, layers, layer_aggs, no_context=False):
        """Per sentence (as the model sees them: long ones cut), its tokens' vectors after layer
        aggregation [T, D]."""
        sents = self.pieces(sentences)
        token_vecs = []  # per sentence: [T, L, H]
        for i, s in enumerate(sents):
            if no_context:
                token_vecs.append(np.stack([self.hidden(*self.window([t])[:2])[layers, 1] for t in s]))
                continue
            views = []
            if len(sents) == 1:
                ids, types, a0, _ = self.window(s)
                views.append(self.hidden(ids, types)[layers, a0:a0 + len(s)])
            if i + 1 < len(sents):
                ids, types, a0, _ = self.window(s, sents[i + 1])
                views.append(self.hidden(ids, types)[layers, a0:a0 + len(s)])
            if i > 0:
                ids, types, _, b0 = self.window(sents[i - 1], s)
                views.append(self.hidden(ids, types)[layers, b0:b0 + len(s)])
            token_vecs.append(np.transpose(np.mean(views, 0), (1, 0, 2)))
        return [np.array([np.concatenate([t.reshape(-1) if a == "concatenate" else AGG[a](t) for a in layer_aggs])
                          for t in tv]) for tv in token_vecs]

    def message_vector(self, sentences, layers, layer_aggs, word_aggs, no_context=False):
        per_token = self.token_vectors(sentences, layers, layer_aggs, no_context)
        if not per_token:
            return None
        return np.mean([np.concatenate([AGG[a](t) for a in word_aggs]) for t in per_token], 0)

    def group_vectors(self, messages, layers, layer_aggs, word_aggs, msg_aggs, no_context=False):
        """{group: vector} from [(message_id, group, sentences)]; first occurrence of an id wins."""
        seen, by_group = set(), {}
        self.prefetch([sentences for _, _, sentences in messages], no_context)
        for mid, group, sentences in messages:
            if mid in seen or group is None:
                continue
            seen.add(mid)
            v = self.message_vector(sentences, layers, layer_aggs, word_aggs, no_context)
            if v is not None:
                by_group.setdefault(group, []).append(v)
        return {g: np.concatenate([AGG[a](np.array(vs)) for a in msg_aggs]) for g, vs in by_group.items()}


def feature_vectors(rows, msg_aggs):
    """{group: vector} from feature-table rows (group_id, feat, value), in SPEC's feature order."""
    by_group = {}
    for g, feat, value in rows:
        by_group.setdefault(g, {})[feat] = value
    out = {}
    for g, feats in by_group.items():
        dims = len(feats) // len(msg_aggs)
        from bertfeat.aggregate import ABBR
        out[g] = np.array([feats[f"{j}{ABBR[a]}"] for a in msg_aggs for j in range(dims)])
    return out


def load_messages(engine, table="msgs_stoks"):
    return [(m, g, json.loads(s)) for m, g, s in
            engine.query(f"SELECT message_id, user_id, message FROM {table} ORDER BY message_id")]
