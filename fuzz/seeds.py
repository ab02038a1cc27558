#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/:
well-formed inputs of each format, from which the fuzzer mutates. Run from
the repository root; files are named by content, so running it again adds
nothing twice."""
import hashlib
import os
import struct

def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def i32(v): return struct.pack(">i", v)
def u64(v): return struct.pack(">Q", v)
def cstr(s): return s.encode() + b"\0"

def tuple_data(values):
    out = u16(len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "<unchanged>":
            out += b"u"
        else:
            out += b"t" + i32(len(v.encode())) + v.encode()
    return out

BEGIN = b"B" + u64(0x16B3748) + u64(756_000_000_000_000) + u32(731)
COMMIT = b"C" + u8(0) + u64(0x16B3748) + u64(0x16B3778) + u64(756_000_000_000_000)
RELATION = (b"R" + u32(16384) + cstr("public") + cstr("items") + b"d" + u16(3)
            + u8(1) + cstr("id") + u32(23) + i32(-1)
            + u8(0) + cstr("name") + u32(25) + i32(-1)
            + u8(0) + cstr("tags") + u32(1009) + i32(-1))
INSERT = b"I" + u32(16384) + b"N" + tuple_data(["1", "café", "{a,\"b c\"}"])
UPDATE = b"U" + u32(16384) + b"O" + tuple_data(["1", "old", None]) + b"N" + tuple_data(["1", "new", "<unchanged>"])
UPDATE_KEY = b"U" + u32(16384) + b"K" + tuple_data(["1", None, None]) + b"N" + tuple_data(["2", "x", None])
DELETE = b"D" + u32(16384) + b"K" + tuple_data(["1", None, None])
TRUNCATE = b"T" + u32(2) + u8(1) + u32(16384) + u32(16385)
def message(flags, lsn, prefix, content):
    return b"M" + u8(flags) + u64(lsn) + cstr(prefix) + u32(len(content)) + content
MESSAGE = message(1, 0x16B3750, "sluice.annotations", b'{"user": "ana"}')
WATERMARK = message(0, 0x16B3760, "sluice.backfill:sluice:abc", b'{"backfill":1,"chunk":2,"mark":"high"}')
TYPE = b"Y" + u32(16400) + cstr("public") + cstr("mood")
ORIGIN = b"O" + u64(0x16B3700) + cstr("origin")
PGOUTPUT = [BEGIN, COMMIT, RELATION, INSERT, UPDATE, UPDATE_KEY, DELETE, TRUNCATE,
            MESSAGE, WATERMARK, TYPE, ORIGIN]

def copy_data(payload): return b"d" + i32(len(payload) + 4) + payload
def xlog(start, data): return copy_data(b"w" + u64(start) + u64(start + len(data)) + u64(0) + data)
KEEPALIVE = copy_data(b"k" + u64(0x16B3778) + u64(0) + u8(1))
REPLICATION = [
    xlog(0x16B3700, BEGIN) + xlog(0x16B3710, RELATION) + xlog(0x16B3720, INSERT) + xlog(0x16B3748, COMMIT),
    KEEPALIVE,
    KEEPALIVE + xlog(0x16B3800, DELETE),
    b"C" + i32(11) + b"COPY 0\0" + b"c" + i32(4),
    b"E" + i32(30) + b"SERROR\0C57P01\0Mterminated\0\0",
]

COPY = [
    u8(2) + b"1\tabc\tx\\ty\n2\t\\N\tz\n",
    u8(1) + b"a\\\\b\tc\\nd\t\\N\n",
    u8(0) + b"only\n\\N\n",
]

TYPES = [  # (kind byte: low nibble the scalar, high nibble the array shape)
    (0, b"t"), (1, b"-9223372036854775808"), (2, b"NaN"), (2, b"1.5e-07"), (3, b"123456789012345678901234567890.5"),
    (4, b"caf\xc3\xa9 \"quoted\"\\\n\x01"), (5, b'{"a": [1, 2.5, "x"], "b": null}'), (6, b"2024-01-02"),
    (7, b"03:04:05.123"), (8, b"03:04:05+02"), (9, b"2024-01-02 03:04:05.5"), (10, b"2024-01-02 03:04:05+00"),
    (11, b"P1Y2M3DT4H5M6S"), (12, b"\\x0102ff"), (0xA1, b"{1,2,NULL,3}"), (0xA4, b'{"a b",c,"d\\"e",NULL}'),
    (0xE4, b"{(1,1),(0,0);(2,2),(1,1)}"), (0xF1, b"{{1,2},{3,4}}"), (0xA9, b'{"2024-01-02 03:04:05"}'),
    (4, b"\xff\xfe invalid utf-8"),
]

CONFIG = [
    b'[source]\ndatabase_url = "postgres://localhost/app"\n\n[[tables]]\nname = "public.items"\n',
    b'[source]\ndatabase_url_env = "DATABASE_URL"\nslot = "s1"\n\n[pipeline]\nshards = 8\nbatch_max_changes = 100\n\n'
    b'[[tables]]\nname = "items"\nkey = ["id"]\nwhere = ["active = true", "price > 10"]\n'
    b'transform = { drop = ["secret"], rename = { name = "title" }, fields = { label = "{name} ({sku})" } }\n\n'
    b'[[sinks]]\nname = "search"\ntype = "elasticsearch"\nurl = "http://localhost:9200"\n',
    b'[source]\ndatabase_url = "x"\n\n[[tables]]\nname = "t"\nfilter = "keep"\n\n[functions.keep]\nkind = "filter"\n'
    b'code = "function filter(action, record) return record.active end"\n',
    b'[source]\ndatabase_url = 1\n[[tables]]\nname = ""\n[[sinks]]\ntype = "meilisearch"\n',
]

ES = [
    u8(2) + b'{"took":3,"errors":false,"items":[{"index":{"_id":"1","status":201}},{"update":{"_id":"2","status":200}}]}',
    u8(3) + b'{"took":3,"errors":true,"items":[{"index":{"_id":"1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"x"}}},'
    b'{"update":{"_id":"2","status":404,"error":{"type":"document_missing_exception"}}},{"delete":{"_id":"3","status":429,"error":{"type":"es_rejected_execution_exception"}}}]}',
    u8(1) + b'{"error":{"type":"illegal_argument_exception","reason":"bad"},"status":400}',
]

TYPESENSE = [
    u8(2) + b'{"success":true}\n{"success":false,"error":"Bad JSON.","code":400,"document":"{}"}',
    u8(1) + b'{"message":"Not Found"}',
    u8(3) + b'{"success":true}\n\n{"success":true}\n{"success":false,"error":"x","code":409}',
]

def le32(v): return struct.pack("<I", v)
def le64(v): return struct.pack("<Q", v)
def lestr(b): return le32(len(b)) + b
def op(lsn, index, table, id, action, routing=None):
    out = le64(lsn) + lestr(index) + lestr(table) + lestr(id)
    out += (u8(1) + lestr(routing)) if routing else u8(0)
    return out + action
def frame(shard, upto, last, scope, ops, nbytes=100):
    return le32(shard) + le64(upto) + u8(last) + scope + le64(nbytes) + le32(len(ops)) + b"".join(ops)
UPSERT = u8(0) + u8(2) + lestr(b'{"id":1,"name":"a"}')
SPOOL = [
    frame(0, 1000, 0, u8(0), [op(900, b"items", b"public.items", b"1", UPSERT), op(950, b"items", b"public.items", b"2", u8(1))]),
    frame(3, 2000, 1, u8(1) + le32(1) + le64(1500), [op(1900, b"items", b"public.items", b"7", u8(0) + u8(1) + lestr(b'{"a":1}'), b"tenant-1")]),
    frame(1, 3000, 0, u8(0), [op(2999, b"items", b"public.items", b"", u8(2) + le64(4)), op(2999, b"shared", b"public.items", b"", u8(3) + le64(5))]),
]

MEILISEARCH = [
    u8(0) + b'{"taskUid":12,"indexUid":"items","status":"enqueued","type":"documentAdditionOrUpdate","enqueuedAt":"2024-05-01T10:00:00Z"}',
    u8(1) + b'{"uid":12,"status":"failed","error":{"message":"bad","code":"invalid_document_fields","type":"invalid_request","link":"https://docs"}}',
    u8(1) + b'{"uid":13,"status":"succeeded"}',
    u8(2) + b'{"message":"Index `items` not found.","code":"index_not_found","type":"invalid_request","link":"x"}',
    u8(3) + b'{"results":[{"id":"1","name":"a"},{"id":2,"price":1.5}],"offset":0,"limit":20,"total":2}',
]

TURBOPUFFER = [
    b'{"status":"error","error":"namespace not found"}',
    b'{"rows":[{"id":1,"name":"a","$dist":0.5},{"id":"b","tags":["x"]}],"billing":{}}',
]

VERIFY = [
    u8(0) + b'{"pit_id":"p2","hits":{"hits":[{"_id":"1","_source":{"a":1},"sort":[0]},{"_id":"2","_source":{"b":"x"},"sort":[1]}]}}',
    u8(0) + b'{"pit_id":"p2","hits":{"hits":[]}}',
    u8(1) + b'{"docs":[{"_index":"i","_id":"1","found":true,"_source":{"a":1}},{"_index":"i","_id":"2","found":false}]}',
    u8(2) + b'{"id":"7","name":"item","price":1.25}',
    u8(3) + b'{"n":-1.50e+3,"t":"2024-05-01 10:00:00.123+02:30","o":{"b":[1,2.0],"a":null}}',
    u8(3) + b'-0.000120e-7',
]

CORPORA = {
    "pgoutput": PGOUTPUT,
    "replication_stream": REPLICATION,
    "copy_text": COPY,
    "type_json": [u8(k) + t for k, t in TYPES],
    "config": CONFIG,
    "elasticsearch_bulk": ES,
    "typesense_import": TYPESENSE,
    "spool_frame": SPOOL,
    "meilisearch_response": MEILISEARCH,
    "turbopuffer_response": TURBOPUFFER,
    "verify_read": VERIFY,
}

for target, seeds in CORPORA.items():
    directory = os.path.join("fuzz", "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for seed in seeds:
        name = "seed-" + hashlib.sha1(seed).hexdigest()[:16]
        with open(os.path.join(directory, name), "wb") as f:
            f.write(seed)
