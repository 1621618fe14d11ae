"""Opt-in caps on what one node holds (an extension; beanstalkd has none).

How this works
--------------
``--max-jobs N`` caps the number of jobs the node holds (every state:
ready, reserved, delayed, buried); ``--max-job-bytes BYTES`` caps the sum
of their bodies.  0 (the default) means no cap.  The store owns the two
figures (``len(store.jobs)`` and ``store.job_bytes``, kept exact by put,
delete and binlog replay); ``Caps`` only judges them.  A put that would go
past either cap is refused before anything is logged, and the client hears
``OUT_OF_MEMORY``: the reply every beanstalkd client already handles for a
server that cannot take a job.  Nothing else changes: release, bury, kick
and replay never refuse (the job is already held; replay restores what was
acknowledged even if a cap was lowered since).

``stats`` shows the caps and the current figures only when a cap is set,
so by default it stays beanstalkd's field for field; /metrics always shows
them (``bsnode_caps_*``; a limit of 0 means none).
"""

from __future__ import annotations

from dataclasses import dataclass

FLAGS = {"--max-jobs": "max_jobs", "--max-job-bytes": "max_job_bytes"}
USAGE = """\
 --max-jobs N         hold at most N jobs; a put beyond answers OUT_OF_MEMORY
 --max-job-bytes B    hold at most B bytes of job bodies in all; the same reply
"""


@dataclass(frozen=True)
class Caps:
    max_jobs: int = 0  # 0: no cap
    max_job_bytes: int = 0

    @property
    def active(self) -> bool:
        return bool(self.max_jobs or self.max_job_bytes)

    def admits(self, store, body_size: int) -> bool:
        """May one more job of ``body_size`` bytes be stored?"""
        if self.max_jobs and len(store.jobs) >= self.max_jobs:
            return False
        return not (self.max_job_bytes and store.job_bytes + body_size > self.max_job_bytes)

    def stats_fields(self, store) -> list[tuple[str, object]]:
        """Appended to `stats`, only when a cap is set."""
        if not self.active:
            return []
        return [("max-jobs", self.max_jobs), ("max-job-bytes", self.max_job_bytes),
                ("current-jobs", len(store.jobs)), ("current-job-bytes", store.job_bytes)]


NO_CAPS = Caps()


def parse(values: dict) -> Caps:
    """The caps the flags set; ValueError names a bad value."""
    out = {}
    for flag, key in FLAGS.items():
        text = values.get(key)
        if text is None:
            continue
        if not str(text).isdigit():
            raise ValueError(f"{flag}: expected a whole number >= 0, got {text!r}")
        out[key] = int(text)
    return Caps(**out)


def add_metrics(collector, store) -> None:
    """Always in /metrics: the figures and the limits (0 = no cap)."""
    caps = store.caps
    for name, help_text, value in (
        ("caps_jobs", "jobs held now (every state), judged against max-jobs",
         len(store.jobs)),
        ("caps_job_bytes", "bytes of job bodies held now, judged against max-job-bytes",
         store.job_bytes),
        ("caps_max_jobs", "--max-jobs (0: no cap)", caps.max_jobs),
        ("caps_max_job_bytes", "--max-job-bytes (0: no cap)", caps.max_job_bytes),
    ):
        collector.family(name, "gauge", help_text).add({}, value)
