"""beanstalkd's flat YAML: the bodies of its stats and list replies, written and read.

doc/protocol.txt calls these bodies YAML; they are one flat level only:
"---\n", then "key: value\n" lines (stats, stats-tube, stats-job) or
"- name\n" lines (list-tubes, list-tubes-watched).  The node and the proxy
write them (``yaml_dict_reply``, ``yaml_list_reply``: the whole ``OK``
reply); clients read them (``parse_yaml_dict``, ``parse_yaml_list``).
"""

from __future__ import annotations

# Values are ints, floats, true/false or strings (some quoted).  Keys whose value is
# always a string, per reply, so that a hostname or a tube called "123" stays one:
STATS_STR_KEYS = frozenset({"version", "id", "hostname", "os", "platform"})
STATS_TUBE_STR_KEYS = frozenset({"name"})
STATS_JOB_STR_KEYS = frozenset({"tube", "state"})


def yaml_dict_reply(fields) -> bytes:
    """The whole ``OK`` reply with a stats body; ``fields`` are (key, value) pairs,
    each value written as ``str()`` writes it."""
    return _ok_reply("---\n" + "".join(f"{k}: {v}\n" for k, v in fields))


def yaml_list_reply(names) -> bytes:
    """The whole ``OK`` reply with a list body."""
    return _ok_reply("---\n" + "".join(f"- {n}\n" for n in names))


def _ok_reply(text: str) -> bytes:
    data = text.encode()
    return b"OK %d\r\n%s\r\n" % (len(data), data)


def parse_yaml_dict(body: bytes, str_keys: frozenset = frozenset()) -> dict:
    """A stats body as a dict; numbers become int/float, true/false bool."""
    out: dict = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue  # "---" and blank lines
        if key in str_keys:
            out[key] = value[1:-1] if value[:1] == '"' == value[-1:] else value
        else:
            out[key] = _scalar(value)
    return out


def parse_yaml_list(body: bytes) -> list[str]:
    """A list body ("- name" lines) as a list of str."""
    return [
        line[2:] for line in body.decode("utf-8", "replace").splitlines()
        if line.startswith("- ")
    ]


def _scalar(text: str):
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
