#!/usr/bin/env python3
"""Load a real dialog corpus through the API, then read it all back.

The corpus is the `chatterbot-corpus` package from PyPI: about 240 YAML files
of conversations in some 28 languages. Each language becomes an application,
each conversation a chat, each line a message, in order. After the flush
interval has passed, every chat is read back with GET (paged lists) and each
line is compared byte for byte and in order.

Usage (the service must be running; see README):
    scripts/load_corpus.sh [--base-url http://127.0.0.1:3000] [--wait-secs 75]

Only the standard library and PyYAML are used; `scripts/load_corpus.sh`
installs both packages into a virtualenv.
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import pathlib
import sys
import threading
import time
import urllib.parse

import yaml
import chatterbot_corpus

_local = threading.local()


def conn(base):
    c = getattr(_local, "conn", None)
    if c is None:
        u = urllib.parse.urlparse(base)
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        _local.conn = c
    return c


def call(base, method, path, body=None, retries=100):
    """One request with keep-alive; retries 503 (backpressure) and 429 (rate
    limit) after Retry-After."""
    for _ in range(retries):
        c = conn(base)
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data else {}
        try:
            c.request(method, "/api/v1" + path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read()
        except (ConnectionError, http.client.HTTPException):
            _local.conn = None
            time.sleep(0.2)
            continue
        if r.status in (429, 503):
            time.sleep(float(r.getheader("retry-after") or 1))
            continue
        return r.status, (json.loads(raw) if raw else None)
    raise RuntimeError(f"{method} {path}: still 503/429 after {retries} tries")


def load_corpus():
    """{language: [conversation, ...]} with every line kept as a string."""
    root = pathlib.Path(chatterbot_corpus.__file__).parent / "data"
    corpus = {}
    for lang_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        convs = []
        for f in sorted(lang_dir.glob("*.yml")):
            # BaseLoader keeps every scalar as the string written in the file.
            doc = yaml.load(f.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
            for conv in doc.get("conversations") or []:
                lines = [l for l in conv if isinstance(l, str)]
                if lines:
                    convs.append(lines)
        if convs:
            corpus[lang_dir.name] = convs
    return corpus


def post_conversation(base, token, lines):
    status, body = call(base, "POST", f"/applications/{token}/chats", {})
    assert status == 201, (status, body)
    chat = body["number"]
    sent = []
    for line in lines:
        status, body = call(base, "POST", f"/applications/{token}/chats/{chat}/messages", {"body": line})
        if status == 422:  # a blank line: refused by design
            continue
        assert status == 201, (status, body)
        sent.append(line)
        assert body["number"] == len(sent), "numbers are gapless and in order"
    return chat, sent


def read_chat(base, token, chat):
    bodies, page = [], 1
    while page:
        status, body = call(base, "GET", f"/applications/{token}/chats/{chat}/messages?per_page=100&page={page}")
        assert status == 200, (status, body)
        bodies += [m["body"] for m in body["messages"]]
        page = body["meta"]["next_page"]
    return bodies


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:3000")
    ap.add_argument("--wait-secs", type=float, default=75, help="how long to wait for the flush before reading back")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--index-wait-secs", type=float, default=30,
                    help="with --search-check: how long to wait for the search index (it follows the flush) to catch up")
    ap.add_argument("--search-check", action="store_true",
                    help="then search a word found in exactly one conversation, and time searches")
    ap.add_argument("--dump-lines", metavar="LANGUAGE",
                    help="only print, as a JSON array, every distinct non-blank line of LANGUAGE "
                         "(files in name order, first occurrence kept): the chat that "
                         "`bench search-quality` searches with its judged queries")
    args = ap.parse_args()

    corpus = load_corpus()
    if args.dump_lines:
        seen, lines = set(), []
        for conv in corpus[args.dump_lines]:
            for line in conv:
                if line.strip() and line not in seen:
                    seen.add(line)
                    lines.append(line)
        json.dump(lines, sys.stdout, ensure_ascii=False)
        return
    n_lines = sum(len(l) for c in corpus.values() for l in c)
    print(f"corpus: {len(corpus)} languages, {sum(len(c) for c in corpus.values())} conversations, {n_lines} lines")

    started = time.monotonic()
    expected = {}  # (token, chat) -> lines
    with cf.ThreadPoolExecutor(args.workers) as pool:
        jobs = {}
        for lang, convs in corpus.items():
            status, app = call(args.base_url, "POST", "/applications", {"name": f"chatterbot-corpus {lang}"})
            assert status == 201, (status, app)
            for i, lines in enumerate(convs):
                fut = pool.submit(post_conversation, args.base_url, app["token"], lines)
                jobs[fut] = (app["token"], lang, i)
        where = {}  # (lang, conversation index) -> (token, chat)
        for fut in cf.as_completed(jobs):
            chat, sent = fut.result()
            token, lang, i = jobs[fut]
            expected[(token, chat)] = sent
            where[(lang, i)] = (token, chat)
    elapsed = time.monotonic() - started
    records = len(expected) + sum(len(v) for v in expected.values())
    skipped = n_lines - (records - len(expected))
    print(f"loaded: {len(corpus)} applications, {len(expected)} chats, "
          f"{records - len(expected)} messages in {elapsed:.1f} s ({records / elapsed:.0f} records/s); "
          f"{skipped} blank lines refused with 422 by design")

    deadline = time.monotonic() + args.wait_secs
    pending = dict(expected)
    while pending and time.monotonic() < deadline:
        with cf.ThreadPoolExecutor(args.workers) as pool:
            got = dict(zip(pending, pool.map(lambda k: read_chat(args.base_url, *k), pending)))
        pending = {k: v for k, v in pending.items() if got[k] != v}
        if pending:
            time.sleep(2)
    waited = args.wait_secs - max(0.0, deadline - time.monotonic())
    if pending:
        k = next(iter(pending))
        print(f"FAILED: {len(pending)} chats not read back identically after {waited:.0f} s, e.g. {k}", file=sys.stderr)
        sys.exit(1)
    print(f"verified: every line read back byte for byte and in order ({waited:.0f} s after loading)")
    if args.search_check:
        search_check(args, corpus, where)


def search(base, token, chat, q):
    path = f"/applications/{token}/chats/{chat}/messages/search?per_page=100&q=" + urllib.parse.quote(q)
    started = time.monotonic()
    status, body = call(base, "GET", path)
    took = time.monotonic() - started
    assert status == 200, (status, body)
    return [m["body"] for m in body["messages"]], took


def search_check(args, corpus, where):
    """A word that occurs in exactly one conversation is found in that chat
    and in no other chat of its application; then search latency is timed."""
    import re
    seen = {}
    for lang, convs in corpus.items():
        for i, lines in enumerate(convs):
            for w in set(re.findall(r"[a-z]{7,}", " ".join(lines).lower())):
                seen.setdefault(w, set()).add((lang, i))
    word, (lang, i) = next((w, next(iter(s))) for w, s in sorted(seen.items())
                           if len(s) == 1 and next(iter(s))[0] == "english")
    token, chat = where[(lang, i)]
    started = time.monotonic()
    hits, _ = search(args.base_url, token, chat, word)
    # The index follows the flush (about a second later): wait for it.
    while not hits and time.monotonic() - started < args.index_wait_secs:
        time.sleep(0.5)
        hits, _ = search(args.base_url, token, chat, word)
    if args.index_wait_secs:
        print(f"search index caught up {time.monotonic() - started:.1f} s after the read-back")
    assert hits and all(word in h.lower() for h in hits), (word, hits)
    others = [(t, c) for (t, c) in where.values() if t == token and c != chat]
    with cf.ThreadPoolExecutor(args.workers) as pool:
        leaks = [k for k, (h, _) in zip(others, pool.map(lambda k: search(args.base_url, *k, word), others)) if h]
    assert not leaks, f"{word!r} found in other chats: {leaks[:5]}"
    print(f"search check: {word!r} found in its chat ({len(hits)} hit) and in none of the other {len(others)} chats")

    # Latency over the loaded corpus: a word of each conversation, searched in its chat.
    probes = []
    for (lang, i), (t, c) in sorted(where.items())[:: max(1, len(where) // 1000)]:
        words = re.findall(r"\w{4,}", " ".join(corpus[lang][i]))
        if words:
            probes.append((t, c, words[0]))
    with cf.ThreadPoolExecutor(4) as pool:
        times = sorted(took for _, took in pool.map(lambda p: search(args.base_url, *p), probes))
    pct = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1000
    print(f"search latency over {len(times)} searches: p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms")


if __name__ == "__main__":
    main()
