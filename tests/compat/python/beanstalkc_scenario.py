"""One scenario through beanstalkc (the beanstalkc3 fork); prints one JSON
line per step.  usage: python beanstalkc_scenario.py PORT"""

import json
import sys
import time

import beanstalkc
import yaml


def plain(o):
    return o.decode("latin-1") if isinstance(o, bytes) else repr(o)


def show(step, value):
    print(json.dumps([step, value], default=plain), flush=True)


def job(j):
    return None if j is None else [j.jid, j.body.encode("latin-1").hex()]


def attempt(step, f):
    try:
        show(step, f())
    except beanstalkc.CommandFailed as e:
        show(step, {"error": e.args[1]})
    except beanstalkc.DeadlineSoon:
        show(step, {"error": "DEADLINE_SOON"})


# beanstalkc's own YAML call predates PyYAML 6 (load() needs a Loader)
c = beanstalkc.Connection("127.0.0.1", int(sys.argv[1]), parse_yaml=yaml.safe_load,
                          encoding="latin-1")
attempt("use", lambda: c.use("compat-a"))
attempt("list-tube-used", lambda: c.using())
show("put hello", c.put("hello", priority=10, ttr=60))
show("put world", c.put("world", priority=5, ttr=60))
later = c.put("later", priority=5, delay=100, ttr=60)
show("put later", later)
show("put crlf", c.put("a\r\nb\x00\xff", priority=50, ttr=60))
attempt("watch", lambda: c.watch("compat-a"))
attempt("ignore default", lambda: c.ignore("default"))
attempt("ignore last", lambda: c.ignore("compat-a"))
attempt("list-tubes-watched", lambda: c.watching())
j = c.reserve()
show("reserve", job(j))
attempt("stats-job", lambda: {k: v for k, v in j.stats().items() if k not in ("age", "time-left")})
attempt("release", lambda: j.release(priority=20))
attempt("peek-ready", lambda: job(c.peek_ready()))
j2 = c.reserve(timeout=0)
show("reserve-with-timeout", job(j2))
attempt("bury", lambda: j2.bury(priority=30))
attempt("peek-buried", lambda: job(c.peek_buried()))
attempt("peek-delayed", lambda: job(c.peek_delayed()))
attempt("stats-tube", lambda: c.stats_tube("compat-a"))
attempt("kick", lambda: c.kick(1))
attempt("kick-job", lambda: c.kick_job(later))
j3 = c.reserve()
show("reserve kicked", job(j3))
attempt("touch", lambda: j3.touch())
attempt("delete", lambda: c.delete(j3.jid))
attempt("delete again", lambda: c.delete(j3.jid))
attempt("peek missing", lambda: job(c.peek(999999)))
attempt("pause-tube", lambda: c.pause_tube("compat-a", 0))
attempt("list-tubes", lambda: c.tubes())
while (d := c.reserve(timeout=0)) is not None:
    show("drain", job(d))
    d.delete()
show("drain end", None)
big = bytes(i % 251 if i % 7 == 0 else 120 for i in range(65535)).decode("latin-1")
big_id = c.put(big, priority=1, ttr=60)
got = c.reserve()
show("big", [got.jid == big_id, len(got.body), got.body == big])
got.delete()
attempt("too big", lambda: c.put("y" * 65536, priority=1, ttr=60))
attempt("stats", lambda: c.stats())
soon = c.put("soon", priority=1, ttr=1)
sent = time.monotonic()
attempt("reserve ttr 1", lambda: job(c.reserve()))
attempt("deadline soon", lambda: job(c.reserve(timeout=1)))
show("in time", time.monotonic() - sent < 0.5)  # TTR 1 s: a stall would expire it
attempt("delete ttr 1", lambda: c.delete(soon))
c.close()
