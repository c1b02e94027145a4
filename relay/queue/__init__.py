"""The queue: the only module that talks to Redis.

Layout (every key name is built in `keys.Keys`):

    {prefix}:{pNN}:ready            stream of conversation tokens, consumer group "workers"
    {prefix}:{pNN}:mbox:{conv}      list: a conversation's message ids, in arrival order
    {prefix}:{pNN}:body             hash: message id → envelope
    {prefix}:{pNN}:delayed          sorted set: conversation → when to retry (ms)
    {prefix}:{pNN}:dead             stream of dead letters (id, reason, code, at, envelope)
    {prefix}:{pNN}:deadcodes        hash: dead-letter code → how many (for stats)
    {prefix}:{pNN}:failures:{hour}  hash: destination → failed attempts that hour (expires)
    {prefix}:{pNN}:seen:{id}        dedup marker, expires after the dedup window
    {prefix}:{pNN}:pause            no delivery before this time (ms): Letta's 429 Retry-After
    {prefix}:{pNN}:id:{id}          which partition accepted this id (NN: the id's own partition)
    {prefix}:rec:{kind}:{id}        small records with a TTL (approval cards), one key each

A conversation lives in one of `PARTITIONS` partitions; the `{pNN}` hash tag keeps a
partition in one Redis Cluster slot, and each Lua script touches one partition only. On a
cluster, script calls go to the master of their partition (`relay.redis_nodes.Nodes`); with
`min_replicas`, the writes that must survive a failover are followed by WAIT on the same
connection.
Per-conversation order comes from the mailbox: the stream carries at most one token per
conversation, so its messages are delivered one at a time, head first.

The package, by concern: `keys` (names and partitions), `model` (what callers get back),
`calls` (script calls: grouped round trips, one pipeline per master, WAIT), `ingest`
(accepting messages once), `claims` (the worker's side), `records`, `inspection` (dead
letters, stats, topology), and `core`, the `Queue` that puts them together.
"""

from relay.queue.calls import guard
from relay.queue.core import Queue
from relay.queue.ingest import STALE_BINDING_MS
from relay.queue.keys import GROUP, PARTITIONS, Keys
from relay.queue.model import FAILURE_WINDOW_HOURS, DeadEntry, Depth, Head, QueueStats, Token
from relay.redis_nodes import connect

__all__ = ["FAILURE_WINDOW_HOURS", "GROUP", "PARTITIONS", "STALE_BINDING_MS", "DeadEntry", "Depth", "Head", "Keys",
           "Queue", "QueueStats", "Token", "connect", "guard"]
