"""Messages (lists of sentences) -> message vectors: the math of --add_bert in one object.

The job (jobs/add_bert.py) reads tables, stages and writes; this holds the encoder session, the window
template and the reduction settings, and is all a worker needs: the local loop calls it chunk by
chunk, and a distributed executor can build the same object inside each worker.

    embedder = MessageEmbedder(entry, layers=[4])
    vectors = embedder([["First sentence.", "Second one."], ["A message of one sentence."]])
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .aggregate import DEFAULT_LAYER_AGGREGATION, DEFAULT_WORD_AGGREGATION
from .aggregate.kernels import message_vectors, sentence_vectors
from .runtime import Encoder
from .text import windows


class MessageEmbedder:
    """SPEC §3 up to the message: sentences -> word pieces -> windows -> the chosen layers'
    token vectors -> layer and word reductions -> the mean over the message's sentences."""

    def __init__(self, entry: str | os.PathLike, layers: Sequence[int],
                 layer_aggregation: Sequence[str] = DEFAULT_LAYER_AGGREGATION,
                 word_aggregation: Sequence[str] = DEFAULT_WORD_AGGREGATION,
                 no_context: bool = False, device: str = "cpu", threads: int | None = None,
                 batch_tokens: int | None = None, dlatk_compat: bool = False,
                 tokenizer: str | os.PathLike | None = None, manifest: dict | None = None):
        self.encoder = Encoder(entry, device=device, threads=threads, batch_tokens=batch_tokens, manifest=manifest)
        # the export's tokenizer, or another model's (DLATK's --tokenizer_model)
        self.tokenizer = windows.load_tokenizer(tokenizer or entry / "tokenizer.json")
        self.template = windows.learn_template(self.tokenizer)
        self.limit = windows.piece_limit(self.encoder.max_positions)
        self.layers = list(layers)
        self.layer_aggregation = list(layer_aggregation)
        self.word_aggregation = list(word_aggregation)
        self.no_context = no_context
        self.dlatk_compat = dlatk_compat  # DLATK 1.3.15's windows and token positions (windows.dlatk_plan)
        self.piece_vectors = {}  # --bert_no_context: word piece id -> [layers, H], computed once

    @classmethod
    def for_run(cls, model, settings, run) -> MessageEmbedder:
        """A job's embedder: `model` (models.ResolvedModel), `settings` (settings.BertSettings, what
        shapes the vectors), `run` (settings.RunConfig, how they are computed)."""
        return cls(model.entry, model.layers, settings.layer_aggregation, settings.word_aggregation,
                   settings.no_context, run.device, run.threads, run.batch_tokens, settings.dlatk_compat,
                   None if model.own_tokenizer else model.tokenizer, manifest=model.manifest)

    def __call__(self, messages: Sequence[Sequence[str]]) -> list[np.ndarray | None]:
        """One vector per message (a list of sentences); None for a message with no word pieces."""
        per_message = self.pieces(messages)
        tokens = self.token_states(per_message)
        kept = [m for m, sents in enumerate(per_message) if sents]
        out = [None] * len(messages)
        if not kept:
            return out
        sent_offsets = np.cumsum([0] + [len(s) for m in kept for s in per_message[m]])
        msg_offsets = np.cumsum([0] + [len(per_message[m]) for m in kept])
        sent_vecs = sentence_vectors(np.concatenate(tokens), sent_offsets, self.layer_aggregation,
                                     self.word_aggregation)
        for m, vec in zip(kept, message_vectors(sent_vecs, msg_offsets)):
            out[m] = vec
        return out

    def token_states(self, per_message: list) -> list[np.ndarray]:
        """Token vectors [n, layers, H] of each sentence (as word pieces) of each message, in order."""
        return self._context_free(per_message) if self.no_context else self._in_context(per_message)

    def pieces(self, messages: Sequence[Sequence[str]]) -> list:
        """Per message, its sentences as word pieces, long ones cut (windows.split_long)."""
        flat = [s for sents in messages for s in sents]
        pieces = windows.word_pieces(self.tokenizer, flat) if flat else []
        out, k = [], 0
        for sents in messages:
            out.append(windows.split_long(pieces[k:k + len(sents)], self.limit))
            k += len(sents)
        return out

    def _in_context(self, per_message):
        """Token vectors [n, layers, H] of each sentence, in order, from the SPEC §3 windows."""
        plan = (windows.dlatk_plan if self.dlatk_compat else windows.plan)(self.template, per_message)
        outputs = self.encoder.run(plan.windows, self.layers) if plan.windows else []
        return [np.transpose(windows.sentence_tokens(outputs, where, len(s)), (1, 0, 2))
                for sents, spans in zip(per_message, plan.spans) for s, where in zip(sents, spans)]

    def _context_free(self, per_message):
        """--bert_no_context: each word piece alone in its window, each distinct piece run once."""
        need = sorted({int(t) for sents in per_message for s in sents for t in s} - self.piece_vectors.keys())
        if need:
            made = [windows.piece_window(self.template, t) for t in need]
            start = made[0][1]
            for t, h in zip(need, self.encoder.run([w for w, _ in made], self.layers)):
                self.piece_vectors[t] = h[:, start].copy()
        return [np.stack([self.piece_vectors[int(t)] for t in s]) for sents in per_message for s in sents]


class InlineExecutor:
    """The job's local Executor: `submit(tag, messages)` queues a chunk, `done(wait=True)`
    computes what is queued, in this process, and hands it back [(tag, vectors)]."""

    depth = 1  # chunks queued before the job waits for them (computes them, here)

    def __init__(self, embedder):
        self.embedder, self.queued = embedder, []

    @property
    def pending(self):
        return len(self.queued)

    def submit(self, tag, messages):
        self.queued.append((tag, messages))

    def done(self, wait=False):
        if not wait:
            return []
        out = [(tag, self.embedder(messages)) for tag, messages in self.queued]
        self.queued = []
        return out

    def status(self):
        return ""

    def counts(self):
        return self.embedder.encoder.windows_run, self.embedder.encoder.tokens_run

    def can_read(self, conn):
        return False  # the job reads the rows

    def close(self):
        pass


class Executor(Protocol):
    """What the --add_bert job (jobs/add_bert._stage_messages) needs of whatever computes its
    message vectors: InlineExecutor here, scaleout.ray_pool.RayEmbedder on Ray actors (chunks
    compute elsewhere, several in flight, and the actors can read their rows themselves)."""

    depth: int  # chunks in flight before the job waits for one

    @property
    def pending(self) -> int: ...  # chunks submitted and not yet handed back
    def submit(self, tag, messages) -> None: ...  # messages: lists of sentences, or refs read_shards gave
    def done(self, wait: bool = False) -> list: ...  # [(tag, vectors)] back; with wait, at least one
    def status(self) -> str: ...  # for the progress line
    def counts(self) -> tuple[int, int]: ...  # (windows, tokens) run so far
    def can_read(self, conn: dict) -> bool: ...  # whether read_shards can read the MySQL table
    def close(self) -> None: ...
