"""One scenario through pystalk; prints one JSON line per step.
usage: python pystalk_scenario.py PORT"""

import json
import sys
import time

from pystalk import BeanstalkClient
from pystalk.client import BeanstalkError


def plain(o):
    return o.decode("latin-1") if isinstance(o, bytes) else repr(o)


def show(step, value):
    print(json.dumps([step, value], default=plain), flush=True)


def job(j):
    return None if j is None else [j.job_id, j.job_data.hex()]


def attempt(step, f):
    try:
        show(step, f())
    except BeanstalkError as e:
        show(step, {"error": e.message})


c = BeanstalkClient("127.0.0.1", int(sys.argv[1]))
attempt("use", lambda: c.use("compat-a"))
show("put hello", c.put_job(b"hello", pri=10, ttr=60))
show("put world", c.put_job(b"world", pri=5, ttr=60))
status, later = c.put_job(b"later", pri=5, delay=100, ttr=60)
show("put later", [status, later])
show("put crlf", c.put_job(b"a\r\nb\x00\xff", pri=50, ttr=60))
attempt("watch", lambda: c.watch("compat-a"))
# pystalk ignores "default" itself on the first watch
j = c.reserve_job(timeout=5)
show("reserve", job(j))
attempt("stats-job", lambda: {k: v for k, v in c.stats_job(j.job_id).items()
                              if k not in ("age", "time-left")})
attempt("release", lambda: c.release_job(j.job_id, pri=20))
attempt("peek-ready", lambda: job(c.peek_ready()))
j2 = c.reserve_job(timeout=0)
show("reserve-with-timeout", job(j2))
attempt("bury", lambda: c.bury_job(j2.job_id, pri=30))
attempt("peek-buried", lambda: job(c.peek_buried()))
attempt("peek-delayed", lambda: job(c.peek_delayed()))
attempt("stats-tube", lambda: c.stats_tube("compat-a"))
attempt("kick", lambda: c.kick_jobs(1))
attempt("kick-job", lambda: c.kick_job(later))
j3 = c.reserve_job(timeout=5)
show("reserve kicked", job(j3))
attempt("delete", lambda: c.delete_job(j3.job_id))
attempt("delete again", lambda: c.delete_job(j3.job_id))
attempt("pause-tube", lambda: c.pause_tube("compat-a", 0))
attempt("list-tubes", lambda: c.list_tubes())
while True:
    try:
        d = c.reserve_job(timeout=0)
    except BeanstalkError as e:
        show("drain end", e.message)
        break
    show("drain", job(d))
    c.delete_job(d.job_id)
big = bytes(i % 251 if i % 7 == 0 else 120 for i in range(65535))
_, big_id = c.put_job(big, pri=1, ttr=60)
got = c.reserve_job(timeout=5)
show("big", [got.job_id == big_id, len(got.job_data), got.job_data == big])
c.delete_job(got.job_id)
attempt("too big", lambda: c.put_job(b"y" * 65536, pri=1, ttr=60))
attempt("stats", lambda: c.stats())
_, soon = c.put_job(b"soon", pri=1, ttr=1)
sent = time.monotonic()
attempt("reserve ttr 1", lambda: job(c.reserve_job(timeout=5)))
attempt("deadline soon", lambda: job(c.reserve_job(timeout=1)))
show("in time", time.monotonic() - sent < 0.5)  # TTR 1 s: a stall would expire it
attempt("delete ttr 1", lambda: c.delete_job(soon))
c.close()
