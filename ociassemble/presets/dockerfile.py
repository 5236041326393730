"""A Dockerfile read for ``ociassemble build``: BuildKit's own parser, then Docker's rules.

The text is split into instructions by the ``dockerfile`` package, which wraps BuildKit's
parser (line continuations, the ``escape`` directive, heredocs, JSON and shell forms are
exactly Docker's). What the parser leaves to the builder is done here: stages, ``ARG``
scoping, word processing (quotes and ``$VAR``/``${VAR}``/``${VAR:-x}``/``${VAR:+x}``), and
the check that every instruction is one ociassemble can carry out without running a
container. Nothing here reads an image: :mod:`ociassemble.presets.build` does that.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from ociassemble.errors import UsageError
from ociassemble.text import printable

# what the final stage may hold; a non-final stage only names an image (FROM REF AS NAME)
SUPPORTED = {"ARG", "FROM", "COPY", "ADD", "ENV", "LABEL", "WORKDIR", "USER", "ENTRYPOINT", "CMD", "EXPOSE",
             "RUN"}
COPY_FLAGS = {"from", "chown", "chmod", "link"}
# Docker's predefined ARGs: accepted as --build-arg without an ARG line (they are for RUN steps)
PROXY_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                        "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})


class DockerfileError(UsageError):
    """A Dockerfile ociassemble cannot build: the message names the file and line."""


@dataclass
class Instruction:
    cmd: str  # upper case
    line: int  # first line in the file
    flags: dict[str, str]
    args: list[str]  # as the parser split them (quotes still in place for the shell form)
    json: bool
    text: str  # the instruction with its whitespace collapsed: what the image history records

    def where(self, path: str) -> str:
        return f"{printable(path)}:{self.line}: {self.cmd}"


@dataclass
class Stage:
    base: str  # the image reference or earlier stage name FROM names (ARGs expanded)
    name: str | None  # AS name, lower case as Docker compares it
    line: int
    args: dict[str, str | None]  # ARG values visible in this stage
    steps: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: str
    stages: list[Stage]
    warnings: list[str] = field(default_factory=list)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage | None:
        """The image stage called ``name`` (case-insensitive, as Docker), if any."""
        return next((s for s in self.stages[:-1] if s.name == name.lower()), None)


# -- word processing ---------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(word: str, env: dict[str, str], where: str = "") -> str:
    """Docker's word processing of one word: quotes removed, variables substituted.

    ``'...'`` is literal; in ``"..."`` a backslash escapes only ``$ " \\``; outside quotes it
    escapes any character. ``$NAME``, ``${NAME}``, ``${NAME:-word}`` and ``${NAME:+word}``
    are substituted (an unset name is empty); other ``${...}`` forms are refused.
    """
    out: list[str] = []
    i, n = 0, len(word)
    quote = ""
    while i < n:
        c = word[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                out.append(c)
            i += 1
        elif c == "\\" and i + 1 < n and (not quote or word[i + 1] in '$"\\'):
            out.append(word[i + 1])
            i += 2
        elif c in "'\"" and (not quote or c == quote):
            quote = "" if quote else c
            i += 1
        elif c == "$" and i + 1 < n:
            value, i = _variable(word, i + 1, env, where)
            out.append(value)
        else:
            out.append(c)
            i += 1
    if quote:
        raise DockerfileError(f"{where}: unterminated {quote} quote in {printable(word)}")
    return "".join(out)


def _variable(word: str, i: int, env: dict[str, str], where: str) -> tuple[str, int]:
    if word[i] != "{":
        m = _NAME.match(word, i)
        if m is None:
            return "$", i
        return env.get(m.group(0), ""), m.end()
    close, depth = i + 1, 1
    while close < len(word) and depth:
        if word.startswith("${", close):
            depth, close = depth + 1, close + 2
            continue
        depth -= word[close] == "}"
        close += 1
    close = close - 1 if depth == 0 else -1
    m = _NAME.match(word, i + 1)
    if close < 0 or m is None:
        raise DockerfileError(f"{where}: bad variable substitution in {printable(word)}")
    name, rest = m.group(0), word[m.end():close]
    value = env.get(name, "")
    if rest == "":
        return value, close + 1
    if rest.startswith(":-"):
        return (value or expand(rest[2:], env, where)), close + 1
    if rest.startswith(":+"):
        return (expand(rest[2:], env, where) if value else ""), close + 1
    raise DockerfileError(f"{where}: the substitution ${{{printable(name + rest)}}} is not supported; "
                          "use $NAME, ${NAME}, ${NAME:-default} or ${NAME:+alternative}")


# -- reading the file ---------------------------------------------------------------------------

def platform_args(platform: str | None) -> dict[str, str]:
    """BuildKit's automatic platform ARGs (visible where an ARG line declares them); the
    build platform is the target's: nothing runs here."""
    plat = platform or "linux/amd64"
    os_, _, rest = plat.partition("/")
    arch, _, variant = rest.partition("/")
    out = {}
    for prefix in ("TARGET", "BUILD"):
        out |= {f"{prefix}PLATFORM": plat, f"{prefix}OS": os_, f"{prefix}ARCH": arch, f"{prefix}VARIANT": variant}
    return out


def parse(text: str, path: str, build_args: dict[str, str], automatic: dict[str, str] | None = None) -> Dockerfile:
    """The stages of a Dockerfile, every instruction checked against what ociassemble builds."""
    import dockerfile as buildkit  # BuildKit's parser (a Go extension): loaded only for build

    try:
        commands = buildkit.parse_string(text)
    except buildkit.GoParseError as e:
        raise DockerfileError(f"{printable(path)}: {printable(str(e))}") from None
    stages: list[Stage] = []
    global_args: dict[str, str | None] = {}
    used_args: set[str] = set()
    for c in commands:
        ins = Instruction(c.cmd.upper(), c.start_line, _flags(c.flags, c.cmd.upper(), c.start_line, path),
                          list(c.value), bool(c.json), " ".join(c.original.split()))
        if ins.cmd not in SUPPORTED:
            raise DockerfileError(f"{ins.where(path)} is not an instruction ociassemble build carries out "
                                  f"(it builds {', '.join(sorted(SUPPORTED))})")
        if c.heredocs:
            raise DockerfileError(f"{ins.where(path)}: heredocs are not supported; put the content in a file "
                                  "of the build context and COPY it")
        if ins.cmd == "ARG":
            scope = stages[-1].args if stages else global_args
            for item in ins.args:
                name, eq, default = item.partition("=")
                if not _NAME.fullmatch(name):
                    raise DockerfileError(f"{ins.where(path)}: {printable(name)} is not a valid ARG name")
                if name in build_args:
                    scope[name] = build_args[name]
                    used_args.add(name)
                elif eq:
                    scope[name] = expand(default, _defined(scope), ins.where(path))
                elif automatic and name in automatic:
                    scope[name] = automatic[name]
                elif stages and name in global_args:
                    scope[name] = global_args[name]  # ARG NAME in a stage takes the global value
                else:
                    scope[name] = None
            if stages:
                stages[-1].steps.append(ins)
            continue
        if ins.cmd == "FROM":
            stages.append(_stage(ins, path, global_args))
            continue
        if not stages:
            raise DockerfileError(f"{ins.where(path)} comes before the first FROM")
        stages[-1].steps.append(ins)
    if not stages:
        raise DockerfileError(f"{printable(path)} has no FROM instruction")
    warnings = [f"warning: --build-arg {printable(u)} was not consumed: no ARG {printable(u)} in {printable(path)}"
                for u in sorted(set(build_args) - used_args - PROXY_ARGS)]
    names = [s.name for s in stages if s.name]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DockerfileError(f"{printable(path)}: stage name {printable(dupes[0])} is used twice")
    for s in stages[:-1]:
        extra = [i for i in s.steps if i.cmd != "ARG"]
        if extra:
            raise DockerfileError(
                f"{extra[0].where(path)}: stage {printable(s.name or s.base)} has instructions, but ociassemble "
                "build copies only from image stages (FROM REF AS NAME); move them to the last stage"
            )
    return Dockerfile(path, stages, warnings)


def _defined(args: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in args.items() if v is not None}


def _flags(raw: tuple[str, ...], cmd: str, line: int, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in raw:
        name, eq, value = f.removeprefix("--").partition("=")
        allowed = COPY_FLAGS if cmd in ("COPY", "ADD") else {"platform"} if cmd == "FROM" else set()
        if name not in allowed or (cmd == "ADD" and name == "from"):
            raise DockerfileError(f"{printable(path)}:{line}: {cmd} --{printable(name)} is not supported by "
                                  "ociassemble build")
        out[name] = value if eq else "true"
    return out


def _stage(ins: Instruction, path: str, global_args: dict[str, str | None]) -> Stage:
    args = ins.args
    if len(args) not in (1, 3) or (len(args) == 3 and args[1].lower() != "as"):
        raise DockerfileError(f"{ins.where(path)} must be FROM IMAGE or FROM IMAGE AS NAME")
    if "platform" in ins.flags:
        raise DockerfileError(f"{ins.where(path)} --platform is not supported here; pass --platform to "
                              "ociassemble build")
    base = expand(args[0], _defined(global_args), ins.where(path))
    if not base:
        raise DockerfileError(f"{ins.where(path)}: the image name is empty after substituting ARGs")
    if base == "scratch":
        raise DockerfileError(f"{ins.where(path)} scratch: building from an empty image is not supported; start "
                              "FROM an image")
    name = args[2].lower() if len(args) == 3 else None
    return Stage(base, name, ins.line, {})


# -- instruction arguments ------------------------------------------------------------------------

def pairs(ins: Instruction, env: dict[str, str], path: str) -> list[tuple[str, str]]:
    """ENV and LABEL: key/value pairs (both forms), words processed."""
    if len(ins.args) % 2 or not ins.args:
        raise DockerfileError(f"{ins.where(path)} needs KEY=VALUE pairs")
    out = []
    for k, v in zip(ins.args[::2], ins.args[1::2], strict=True):
        key = expand(k, env, ins.where(path))
        if not key:
            raise DockerfileError(f"{ins.where(path)} has an empty key")
        out.append((key, expand(v, env, ins.where(path))))
    return out


def command(ins: Instruction) -> list[str]:
    """ENTRYPOINT and CMD: the JSON form as it is, the shell form through ``/bin/sh -c``."""
    if ins.json:
        return list(ins.args)
    return ["/bin/sh", "-c", " ".join(ins.args)]


def copy_paths(ins: Instruction, env: dict[str, str], workdir: str, path: str) -> tuple[list[str], str, bool]:
    """COPY/ADD: the sources as written (words processed) and the absolute image destination
    (relative to WORKDIR); the bool says the destination is a directory to copy into."""
    words = list(ins.args) if ins.json else [expand(a, env, ins.where(path)) for a in ins.args]
    if len(words) < 2:
        raise DockerfileError(f"{ins.where(path)} needs at least one source and a destination")
    *srcs, dest = words
    into = dest.endswith(("/", "/.")) or dest == "."
    if len(srcs) > 1 and not into:
        raise DockerfileError(f"{ins.where(path)}: with several sources the destination must be a directory "
                              f"ending in / ({printable(dest)}/)")
    full = posixpath.normpath(posixpath.join(workdir or "/", dest))
    if full.startswith("//"):
        full = full[1:]
    return srcs, full, into


def owner(ins: Instruction, path: str, env: dict[str, str]) -> tuple[int, int] | None:
    """--chown=UID[:GID] in numbers (names would need the image's /etc/passwd)."""
    value = ins.flags.get("chown")
    if value is None:
        return None
    value = expand(value, env, ins.where(path))
    uid, sep, gid = value.partition(":")
    if not uid.isdigit() or (sep and not gid.isdigit()):
        raise DockerfileError(f"{ins.where(path)} --chown={printable(value)}: give numeric UID[:GID]; user names "
                              "need the image's /etc/passwd, which ociassemble does not read")
    return int(uid), int(gid) if sep else int(uid)


def mode(ins: Instruction, path: str, env: dict[str, str]) -> int | None:
    value = ins.flags.get("chmod")
    if value is None:
        return None
    value = expand(value, env, ins.where(path))
    if not re.fullmatch(r"[0-7]{3,4}", value):
        raise DockerfileError(f"{ins.where(path)} --chmod={printable(value)}: give an octal mode such as 0755")
    return int(value, 8)
