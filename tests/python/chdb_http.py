#!/usr/bin/env python3
"""ClickHouse's HTTP query interface in front of chdb, for tests.

This is a protocol front for tests, not a ClickHouse server.  The engine is
real ClickHouse: chdb (ClickHouse built as an in-process library, pinned by
scripts/python-venv; ``SELECT version()`` tells its engine version).  Every
query is parsed and run by that engine, against one persistent chdb session
whose tables live under --data; this file only speaks HTTP the way
clickhouse-server's HTTP interface does, so that an HTTP client such as the
ClickHouse sink can be tested against a modern engine without a server.

Run it with the venv python made by scripts/python-venv:

    PY="$(scripts/python-venv | tail -n1)"
    "$PY" tests/python/chdb_http.py --port 18124 --data target/chdb-data

It prints ``ready`` on stdout once it listens (127.0.0.1 unless --host);
diagnostics go to stderr.  SIGTERM/SIGINT close the session and exit.

Implemented, as clickhouse-server does it:
  * ``GET /ping`` and ``GET /`` without a query -> ``Ok.\\n``.
  * ``GET /?query=...`` and ``POST /?query=...``: the query text is the
    ``query`` URL parameter, then "\\n", then the request body when both are
    present, else whichever is present (so ``INSERT ... FORMAT JSONEachRow``
    in the URL with the rows in the body works).  Request bodies may be sent
    with Content-Length or chunked, and with ``Content-Encoding: gzip``,
    ``deflate`` or ``zstd``.
  * ``INSERT ... FORMAT RowBinary`` (or another binary format) in the URL
    with the rows in the body: chdb takes a query as text, which binary rows
    are not, so the body is written to a file and the query runs as
    ``INSERT ... FROM INFILE 'file' FORMAT RowBinary``, with the same
    settings (deduplication tokens apply as to any insert).
  * URL parameters ``database`` (the current database for the query; or the
    X-ClickHouse-Database header), ``default_format`` (output format when the
    query has no FORMAT clause, or the X-ClickHouse-Format header;
    TabSeparated otherwise), ``param_<name>`` (query parameters for
    ``{name:Type}`` placeholders), and every other parameter as a setting for
    that request only (e.g. ``insert_deduplication_token``,
    ``date_time_input_format``, ``input_format_skip_unknown_fields``), applied
    with ``SET`` before the query and reset afterwards; an unknown setting
    fails the request with code 115 as on a server.  Client-only parameters
    (user, password, query_id, session_id, ...) are accepted and ignored.
  * Errors: the body ``Code: N. DB::Exception: ... (NAME) (version V)\\n`` and
    the header ``X-ClickHouse-Exception-Code: N``, with the HTTP status that
    clickhouse-server's exceptionCodeToHTTPStatus gives that code (400 for
    syntax and parse errors such as 62, 27, 117; 404 for unknown table,
    database, setting such as 60, 81, 115; 500 for the rest; ...).
  * Headers ``X-ClickHouse-Query-Id``, ``X-ClickHouse-Format`` (when known),
    ``X-ClickHouse-Summary`` (read/written rows and bytes, elapsed_ns), and a
    Content-Type by output format.  HTTP/1.1 keep-alive.

Not implemented (differences from a real server that a test could notice):
  * one shared session and one query at a time (serialized with a lock); a
    ``SET`` or ``USE`` sent *inside* a query persists for later requests
    (a server forgets it after the request unless session_id is used);
  * no users, passwords, quotas, readonly-for-GET, sessions (session_id),
    ``compress``/``decompress`` (ClickHouse's own block compression),
    response compression (enable_http_compression), progress headers
    (send_progress_in_http_headers), ``wait_end_of_query``, external data,
    HTTPS, the /play, /replicas_status and custom handlers;
  * results are buffered and sent whole, so an error never arrives in the
    middle of a 200 response;
  * chdb's defaults are those of clickhouse-local, not of a server config;
    the one clickhouse-local-only default that changes parsing,
    ``implicit_select=1``, is set back to 0 at startup.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb.session

# Settings applied at startup (and restored after each request) so that the
# session behaves like a server rather than like clickhouse-local.
BASELINE_SETTINGS = {"implicit_select": "0"}

# URL parameters that are not settings (see ClickHouse's HTTPHandler).
NON_SETTING_PARAMS = {
    "query", "database", "default_format", "user", "password", "quota_key",
    "query_id", "session_id", "session_timeout", "session_check", "compress",
    "decompress", "buffer_size", "wait_end_of_query", "stacktrace", "role",
    "default_database",
}

# clickhouse-server's exceptionCodeToHTTPStatus, by error name (the codes are
# looked up in the engine at startup with errorCodeToName).
STATUS_BY_ERROR_NAME = {
    401: ["REQUIRED_PASSWORD"],
    403: ["UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED",
          "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"],
    400: ["BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
          "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING",
          "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
          "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4",
          "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
          "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
          "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE",
          "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
          "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA",
          "TYPE_MISMATCH", "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"],
    404: ["UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER",
          "UNKNOWN_TYPE", "UNKNOWN_STORAGE", "UNKNOWN_DATABASE",
          "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
          "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT",
          "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"],
    413: ["QUERY_IS_TOO_LARGE"],
    501: ["NOT_IMPLEMENTED"],
    503: ["SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"],
    411: ["HTTP_LENGTH_REQUIRED"],
    408: ["TIMEOUT_EXCEEDED"],
    415: ["UNSUPPORTED_MEDIA_TYPE"],
}

# "Code: 62. DB::Exception: ..." (chdb sometimes nests the prefix twice).
CODE_RE = re.compile(r"^(?:Code: (\d+)\. DB::Exception: )+")
# A trailing FORMAT clause of a query that returns data.
FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
INSERT_RE = re.compile(r"^\s*INSERT\b", re.IGNORECASE)
# An INSERT's trailing FORMAT clause naming a binary row format, whose rows
# cannot travel inside a query string.
BINARY_INSERT_RE = re.compile(
    r"\s+FORMAT\s+(RowBinary[A-Za-z]*|Native)\s*;?\s*$", re.IGNORECASE)


class ClickHouseError(Exception):
    """An error to answer the ClickHouse way: code, message without prefix."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def content_type(fmt: str) -> str:
    f = fmt.lower()
    if f.startswith("tabseparated") or f.startswith("tsv"):
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if f == "jsoneachrow":
        return "application/x-ndjson; charset=UTF-8"
    if f.startswith("json") and "eachrow" not in f:
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


def sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def decode_body(body: bytes, encoding: str) -> bytes:
    enc = encoding.strip().lower()
    try:
        if enc in ("", "identity"):
            return body
        if enc in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if enc == "deflate":
            return zlib.decompress(body)
        if enc == "zstd":
            import pyarrow as pa  # chdb depends on pyarrow, which has zstd

            return pa.CompressedInputStream(pa.BufferReader(body), "zstd").read()
    except Exception as e:  # noqa: BLE001 - answered as the server would
        raise ClickHouseError(354, f"Cannot decompress {enc} request body: {e}") from e
    raise ClickHouseError(89, f"Unknown Content-Encoding of HTTP request: {encoding}")


class Engine:
    """One chdb session; every use goes through run() under one lock."""

    def __init__(self, data_dir: str):
        self.session = chdb.session.Session(data_dir)
        self.lock = threading.Lock()
        self._reset_settings(BASELINE_SETTINGS)
        self.version = self._q("SELECT version()").strip()
        rows = self._q(
            "SELECT number, errorCodeToName(number) FROM numbers(5000) "
            "WHERE errorCodeToName(number) != ''"
        )
        by_name = {}
        for line in rows.splitlines():
            code, name = line.split("\t")
            by_name[name] = int(code)
        self.names = {code: name for name, code in by_name.items()}
        self.status = {
            by_name[name]: status
            for status, names in STATUS_BY_ERROR_NAME.items()
            for name in names
            if name in by_name
        }

    def _q(self, sql: str) -> str:
        return self.session.query(sql, "TabSeparated").bytes().decode()

    def _reset_settings(self, names) -> None:
        for name in names:
            value = BASELINE_SETTINGS.get(name)
            self.session.query(f"SET {name} = {sql_string(value) if value is not None else 'DEFAULT'}")

    def run(self, sql: str, fmt: str, database: str | None, settings: dict, params: dict):
        with self.lock:
            applied = []
            try:
                if database:
                    self.session.query(f"USE {quote_ident(database)}")
                for name, value in settings.items():
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                        raise ClickHouseError(115, f"Unknown setting '{name}'")
                    self.session.query(f"SET {name} = {sql_string(value)}")
                    applied.append(name)
                return self.session.query(sql, fmt, params=params or None)
            finally:
                try:
                    self._reset_settings(applied)
                    if database:
                        self.session.query("USE default")
                except Exception as e:  # noqa: BLE001 - keep serving
                    print(f"chdb_http: resetting session failed: {e}", file=sys.stderr)

    def error_of(self, exc: Exception) -> ClickHouseError:
        if isinstance(exc, ClickHouseError):
            return exc
        text = str(exc).strip()
        m = CODE_RE.match(text)
        if m:
            return ClickHouseError(int(m.group(1)), text[m.end():])
        return ClickHouseError(1001, f"{type(exc).__name__}: {text}")  # STD_EXCEPTION

    def error_body(self, err: ClickHouseError) -> bytes:
        msg = err.message
        name = self.names.get(err.code)
        if name and not msg.endswith(f"({name})"):
            msg += f" ({name})"
        if "(version " not in msg:
            msg += f" (version {self.version})"
        return f"Code: {err.code}. DB::Exception: {msg}\n".encode()


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response has Content-Length
    server_version = "chdb_http"
    engine: Engine  # set in main()

    def log_message(self, format, *args):  # noqa: A002 - quiet unless --verbose
        if self.server.verbose:
            super().log_message(format, *args)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.handle_query(self.read_body())

    def do_HEAD(self):
        self.handle_query(self.read_body())

    def do_POST(self):
        self.handle_query(self.read_body())

    def handle_query(self, raw_body: bytes) -> None:
        url = urlsplit(self.path)
        params = parse_qsl(url.query, keep_blank_values=True)
        args = dict(params)
        query_id = args.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id}
        if url.path == "/ping" or (url.path == "/" and "query" not in args and not raw_body):
            self.reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if url.path != "/":
            self.reply(404, b"There is no handle " + url.path.encode() + b"\n",
                       {"Content-Type": "text/plain; charset=UTF-8"})
            return
        engine = self.engine
        start = time.monotonic_ns()
        try:
            body = decode_body(raw_body, self.headers.get("Content-Encoding", ""))
            q = args.get("query", "")
            binary = BINARY_INSERT_RE.search(q) if q and body and INSERT_RE.match(q) else None
            if binary:
                infile = tempfile.NamedTemporaryFile(prefix="chdb_http-", suffix=".bin")
                infile.write(body)
                infile.flush()
                sql = (q[:binary.start()] + " FROM INFILE " + sql_string(infile.name)
                       + " FORMAT " + binary.group(1))
            else:
                infile = None
                sql = (q + "\n" + body.decode("utf-8", "surrogateescape")) if q and body else (
                    q or body.decode("utf-8", "surrogateescape"))
            if not sql.strip():
                raise ClickHouseError(62, "Empty query")
            fmt = (args.get("default_format") or self.headers.get("X-ClickHouse-Format")
                   or "TabSeparated")
            if not INSERT_RE.match(sql):
                m = FORMAT_RE.search(sql)
                if m:
                    fmt = m.group(1)
            settings = {k: v for k, v in params
                        if k not in NON_SETTING_PARAMS and not k.startswith("param_")}
            qparams = {k[len("param_"):]: v for k, v in params if k.startswith("param_")}
            database = args.get("database") or self.headers.get("X-ClickHouse-Database")
            try:
                res = engine.run(sql, fmt, database, settings, qparams)
            finally:
                if infile is not None:
                    infile.close()
        except Exception as e:  # noqa: BLE001 - every error goes back over HTTP
            err = engine.error_of(e)
            headers.update({
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(err.code),
            })
            self.reply(engine.status.get(err.code, 500), engine.error_body(err), headers)
            return
        out = res.bytes()
        summary = {
            "read_rows": str(res.rows_read()), "read_bytes": str(res.bytes_read()),
            "written_rows": str(res.rows_written()), "written_bytes": str(res.bytes_written()),
            "elapsed_ns": str(time.monotonic_ns() - start),
        }
        headers.update({
            "Content-Type": content_type(fmt) if out else "text/plain; charset=UTF-8",
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
        })
        self.reply(200, out, headers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True, help="chdb session directory (tables persist here)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    a = ap.parse_args()

    engine = Engine(a.data)
    Handler.engine = engine
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.verbose = a.verbose

    def stop(signum, _frame):
        # shutdown() blocks until serve_forever returns, so not from its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"chdb_http: ClickHouse {engine.version} (chdb) at http://{a.host}:{a.port} "
          f"data {a.data}", file=sys.stderr)
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with engine.lock:
            engine.session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
