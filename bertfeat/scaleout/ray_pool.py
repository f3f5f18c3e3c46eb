"""--ray: the local job's `MessageEmbedder`, run inside Ray actors (one ONNX Runtime session each).

The driver keeps everything else of a run as it is locally: reading the table in id order, the
stage (identical texts embedded once, resume, exactly once), the feature table. Only the texts a
chunk still needs go to the actors: each chunk to the actor with the fewest calls queued, up to
two per actor in flight, so the actors compute while the driver reads and stages. The export
travels through Ray's object store (its files as bytes, each checked against the manifest's
sha256 on arrival and kept in the node's temp folder), so a worker node needs neither the
driver's models/ folder nor torch. Actors that die are restarted by Ray and their calls retried.

Why actors fed by the driver rather than a Ray Data pipeline reading the table: the stage's
exactly-once bookkeeping (which texts are already staged or in flight) lives on the driver, and a
Ray Data source would need the rows as files every node can read; the driver's own cost per
message is measured in bench/scaleout.py.
"""
import hashlib
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import BertfeatError, first_line
from ..models import read_manifest

INSTALL = "pip install 'bertfeat[ray]'"
IN_FLIGHT_PER_WORKER = 2  # one computing, one queued behind it: an actor never waits for the driver
SHARDS_KEPT = 2 * IN_FLIGHT_PER_WORKER + 2  # shards an actor keeps read until their texts are embedded
LOOPBACK = ("127.0.0.1", "localhost", "::1", "")


def import_ray():
    try:
        import ray
        return ray
    except ImportError:
        raise BertfeatError(f"--ray needs Ray, which is not installed: {INSTALL}") from None


class _TokenAuthEnabled(logging.Filter):
    """Ray's "Token authentication is enabled for this Ray cluster" (its secure default for a
    local cluster) is not for bertfeat's users; its warning that authentication is *disabled*
    still shows."""
    def filter(self, record):
        return "authentication is enabled for this Ray cluster" not in record.getMessage()


def _quiet_token_notice():
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthEnabled) for f in log.filters):
        log.addFilter(_TokenAuthEnabled())


def _start(ray, address):
    """Join the cluster at `address` ('auto', host:port, or RAY_ADDRESS), or start a local one
    ('local'); returns whether this process started Ray (and so shuts it down)."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    check_reachable(address)
    _quiet_token_notice()
    try:
        if address in (None, "", "local"):
            ray.init(address="local", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BertfeatError(f"--ray {address}: cannot reach a Ray cluster there ({first_line(e, 160)});"
                            " give 'auto', host:port of a running head node, or no address for a local"
                            " Ray") from None
    return True


def check_reachable(address):
    """A host:port that accepts no connection is one line now (ray.init would wait minutes)."""
    import socket
    if not address or address in ("local", "auto") or ":" not in address:
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return
    except (OSError, ValueError) as e:
        raise BertfeatError(f"--ray {address}: cannot reach a Ray cluster there ({e}); give 'auto', host:port"
                            " of a running head node, or no address for a local Ray") from None


class _Worker:
    """One actor: the export rebuilt on its node, a MessageEmbedder over it. The export comes
    with every call (a reference to it in the object store), so an actor Ray restarts rebuilds
    itself on its next call."""

    def __init__(self, model, settings, run):
        self.model, self.settings, self.run = model, settings, run  # models.ResolvedModel, BertSettings, RunConfig
        self.embedder, self.entry = None, None
        self.engine, self.shards = None, {}  # shard reads: the MySQL connection, shard -> {hash: sentences}

    def _load(self, files):
        from ..embedder import MessageEmbedder
        manifest_sha = hashlib.sha256(files["manifest.json"]).hexdigest()[:16]
        entry = Path(tempfile.gettempdir()) / "bertfeat-ray-models" / manifest_sha
        entry.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            path = entry / name
            if not path.exists() or path.stat().st_size != len(data):
                tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        for name, sha in read_manifest(entry).files.items():
            if hashlib.sha256((entry / name).read_bytes()).hexdigest() != sha:
                raise BertfeatError(f"the export arrived corrupted on this node ({name}): hash mismatch")
        # another model's tokenizer (--tokenizer_model) travels too
        custom = entry / "custom_tokenizer.json" if "custom_tokenizer.json" in files else None
        self.entry = str(entry)
        self.embedder = MessageEmbedder.for_run(self.model.moved(entry, custom), self.settings, self.run)

    def read(self, shard, args):
        """Read shard k = [lo, hi) of the message table straight from the MySQL server; keep its
        texts here for embed_shard; return what the driver needs: [(message_id, group_id, (k, text
        hash), text hash)], rows read, {why skipped: n}."""
        from ..tables.mysql import MySQLEngine
        from ..text.sentences import parse_rows
        k, lo, hi = shard
        db, conn, source, fields, from_stoks = args
        if self.engine is None:  # not tables.connect: its drop_stale_temps would judge the driver's temps from here
            self.engine = MySQLEngine(db, config_file=conn.get("mysql_config_file"), host=conn.get("mysql_host"),
                                      port=conn.get("mysql_port"), user=conn.get("mysql_user"))
        rows = self.engine.rows_between(source, fields[0], list(fields), lo, hi)
        self.engine.commit()  # a fresh snapshot for the next shard
        batch, _, skipped = parse_rows(rows, from_stoks)
        self.shards[k] = {h: sents for _, _, sents, h in batch}
        while len(self.shards) > SHARDS_KEPT:
            self.shards.pop(next(iter(self.shards)))
        return [(mid, gid, (k, h), h) for mid, gid, _, h in batch], len(rows), skipped

    def embed_shard(self, export, messages, shard, args):
        """embed() of texts of a shard this actor read ([(k, text hash)]); read again if this
        actor was restarted (or let the shard go) since."""
        if shard[0] not in self.shards:
            self.read(shard, args)
        texts = self.shards.pop(shard[0])
        return self.embed(export, [texts[h] for _, h in messages])

    def _ready(self, export):
        if self.embedder is None:
            import ray
            self._load(ray.get(export[0]))

    def embed(self, export, messages):
        """(message vectors, windows run, tokens run, this process's id)."""
        self._ready(export)
        enc = self.embedder.encoder
        windows, tokens = enc.windows_run, enc.tokens_run
        vectors = self.embedder(messages)
        return vectors, enc.windows_run - windows, enc.tokens_run - tokens, os.getpid()


class RayEmbedder:
    """The job's Executor (embedder.Executor) on Ray: `submit(tag, messages)` sends a chunk to an
    actor, `done(wait)` returns the chunks whose vectors are back [(tag, vectors)]. `run.workers`
    actors of `run.threads` CPUs each (default: as many as the cluster's CPUs hold), each
    building `MessageEmbedder.for_run(model, settings, run)`."""

    def __init__(self, model, settings, run):
        ray = import_ray()
        self.ray = ray
        self.started = _start(ray, run.ray)
        threads, workers = int(run.threads or 1), run.workers
        free = ray.available_resources()  # an actor that cannot be placed would wait forever
        cpus, gpus = int(free.get("CPU", 0)), int(free.get("GPU", 0))
        if run.device == "auto":  # the workers' nodes decide: GPUs if the cluster has any free
            run = replace(run, device="cuda" if gpus else "cpu")
        on_gpu = run.device == "cuda"
        n = int(workers or (gpus if on_gpu else max(1, cpus // threads)))
        if on_gpu and gpus < max(n, 1):
            self.close()
            raise BertfeatError(f"--device cuda runs one Ray worker per GPU, and the Ray cluster has {gpus} GPUs"
                                f" free{f' for {n} workers' if workers else ''}: add GPU nodes, lower --workers,"
                                " or use --device cpu")
        if cpus < n * threads:
            total = int(ray.cluster_resources().get("CPU", 0))
            self.close()
            raise BertfeatError(f"the Ray cluster has {cpus} CPUs free (of {total}); {n} workers of --threads"
                                f" {threads} need {n * threads}: lower --workers or --threads, or add nodes")
        files = {name: (model.entry / name).read_bytes() for name in ("model.onnx", "tokenizer.json", "manifest.json")}
        if not model.own_tokenizer:
            files["custom_tokenizer.json"] = model.tokenizer.read_bytes()
        self.export = [ray.put(files)]  # held by the driver for the whole run; a list, so actors get the reference
        actor = ray.remote(num_cpus=threads, num_gpus=1 if on_gpu else 0, max_restarts=3,
                           max_task_retries=3)(_Worker)
        self.actors = [actor.remote(model, settings, replace(run, threads=threads)) for _ in range(n)]
        self.depth = IN_FLIGHT_PER_WORKER * n
        self.calls = {}  # object ref -> (tag, actor index)
        self.pids = {}  # actor index -> the process that answered last (a new one: Ray restarted it)
        self.restarts, self.windows_run, self.tokens_run = 0, 0, 0
        self.shard_of = None  # shard number -> ((k, lo, hi), actor) once read_shards runs

    @property
    def pending(self):
        return len(self.calls)

    def status(self):
        """For the progress line: how many workers, and whether Ray had to restart any."""
        return f"{len(self.actors)} Ray workers" + (f", {self.restarts} restarted" if self.restarts else "")

    def _least_loaded(self):
        load = [0] * len(self.actors)
        for _, k in self.calls.values():
            load[k] += 1
        return load.index(min(load))

    def counts(self):
        return self.windows_run, self.tokens_run

    def submit(self, tag, messages):
        """Send a chunk's texts: lists of sentences, or, once read_shards runs, (shard, text hash)
        of texts an actor read."""
        if self.shard_of is not None:
            shard, k = self.shard_of.pop(messages[0][0])
            ref = self.actors[k].embed_shard.remote(self.export, messages, shard, self.read_args)
        else:
            k = self._least_loaded()
            ref = self.actors[k].embed.remote(self.export, messages)
        self.calls[ref] = (tag, k)

    def can_read(self, conn):
        """Whether the actors can read a MySQL table themselves: not when the server's address
        is this machine's loopback and the cluster has other nodes (then the driver reads)."""
        from ..progress import notice
        host = str(conn.get("mysql_host") or "")
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        if host in LOOPBACK and len(nodes) > 1:
            notice(f"--ray: the MySQL server is at {host or 'localhost'}, which the other nodes cannot reach:"
                   " this process reads the rows (give --mysql_host a routable address to let the workers"
                   " read their own shards)")
            return False
        return True

    def read_shards(self, starts, args):
        """The parsed chunks of the shards that start at `starts`, in order, each read by an actor
        straight from the server ([(message_id, group_id, (shard, hash), hash)], rows, skipped);
        up to `depth` reads are in flight ahead of the driver."""
        self.read_args, self.shard_of = args, {}  # shard number -> ((k, lo, hi), the actor that read it)
        reads = []

        def oldest():
            k, ref = reads.pop(0)
            yield _get(self.ray, ref)
            self.shard_of.pop(k, None)  # nothing of it needed inference
        for k, (lo, hi) in enumerate(zip(starts, starts[1:] + [None])):
            a = k % len(self.actors)
            self.shard_of[k] = ((k, lo, hi), a)
            reads.append((k, self.actors[a].read.remote((k, lo, hi), args)))
            if len(reads) > self.depth:
                yield from oldest()
        while reads:
            yield from oldest()

    def done(self, wait=False):
        """[(tag, vectors)] of the calls that are back; with `wait`, at least one (if any is out)."""
        refs = list(self.calls)
        if not refs:
            return []
        ready, rest = self.ray.wait(refs, num_returns=1, timeout=None if wait else 0)
        if rest:
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        out = []
        for ref in ready:
            tag, k = self.calls.pop(ref)
            vectors, windows, tokens, pid = _get(self.ray, ref)
            if self.pids.setdefault(k, pid) != pid:
                self.pids[k], self.restarts = pid, self.restarts + 1
            self.windows_run += windows
            self.tokens_run += tokens
            out.append((tag, vectors))
        return out

    def close(self):
        for a in getattr(self, "actors", []):
            self.ray.kill(a)
        self.actors = []
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _get(ray, ref, kept="the vectors staged so far"):
    """ray.get, a failure that outlived Ray's retries as one line (Ray's first sentence)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        text = str(cause) if cause is not None else (str(e).strip().splitlines() or [type(e).__name__])[-1]
        text = text.strip().split(". ")[0]
        raise BertfeatError(f"a Ray worker failed ({text[:200]}); {kept} are kept: run the same command"
                            " again to resume") from None


def _split_task(rows, msg_index):
    from ..text.sentences import split_rows
    return split_rows(rows, msg_index)


def split_on_ray(batches, msg_index, address, workers, released):
    """--add_sent_tokenized --ray: (rows, rows with sentences, skipped) of each batch, in order,
    split by Ray tasks, `workers` of them at once (default: the cluster's free CPUs); the caller
    writes them in id order as it does locally. `released()` is held while waiting on Ray."""
    ray = import_ray()
    started = _start(ray, address)
    try:
        n = int(workers or max(1, int(ray.available_resources().get("CPU", 1))))
        task = ray.remote(num_cpus=1, max_retries=3)(_split_task)
        pending = []
        for rows in batches:
            pending.append((rows, task.remote(rows, msg_index)))
            while len(pending) > n:
                yield _split_result(ray, *pending.pop(0), released)
        while pending:
            yield _split_result(ray, *pending.pop(0), released)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def _split_result(ray, rows, ref, released):
    with released():
        out_rows, skipped = _get(ray, ref, kept="the rows written so far")
    return rows, out_rows, skipped
