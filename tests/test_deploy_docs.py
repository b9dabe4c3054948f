"""deploy/systemd/ runs what the Procfile runs, keeps secrets out of the unit files, and docs/deployment.md says
what the wheel really installs.

How a Procfile line and an ExecStart= line are compared (docs/deployment.md says the same to operators):

- the Procfile's ``env VAR=value`` prefix becomes ``Environment=VAR=value`` in the unit;
- the flower guard (``: "${FLOWER_BASIC_AUTH:?...}" && exec``) becomes an ``ExecStartPre=`` shell check that reads
  the variable as ``$${FLOWER_BASIC_AUTH}``: systemd leaves ``$$`` to the shell, so the value never reaches argv;
- ``${VAR:-default}`` becomes ``${VAR}`` (one word, systemd's syntax) with ``Environment=VAR=default``: the
  EnvironmentFile= overrides Environment=, as a set variable overrides the shell default;
- ``%%`` in a unit is a literal ``%`` (Celery's ``%h``); any other ``%`` is a systemd specifier and a mismatch;
- the program is the same file name, given as an absolute path into the virtualenv.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
UNITS = PROJECT / "deploy" / "systemd"
RELEASE = "mailworker-release.service"
TARGET = "mailworker.target"
VENV_BIN = "/opt/mailworker/venv/bin/"

_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
_GUARD = re.compile(r'^:\s*"\$\{(\w+):\?[^}]*\}"\s*&&\s*exec\s+')
_ENV_PREFIX = re.compile(r"^env\s+((?:\w+=\S+\s+)+)")
#: Names whose value is a secret or may carry one (a URL can hold a password): never set in a unit file.
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY|AUTH|_URL|DSN)", re.I)
_URL_CREDENTIALS = re.compile(r"\w+://[^/\s:@]*:[^/\s@]+@")
_SECRET_FLAG = re.compile(r"--(basic[-_]auth|password|api[-_]key|secret|token)\b", re.I)
#: A key-like run (base64, hex, an API key): 32+ such characters with a digit, that is not an absolute path.
_LONG_TOKEN = re.compile(r"(?<![/\w])(?=[A-Za-z+_-]*\d)[A-Za-z0-9+/_-]{32,}")


@dataclass
class ProcfileLine:
    argv: list[str]
    defaults: dict[str, str] = field(default_factory=dict)  # ${VAR:-default} -> VAR: default
    env: dict[str, str] = field(default_factory=dict)  # env VAR=value prefix, defaults expanded
    guard: str | None = None  # the variable the flower guard requires


def procfile() -> dict[str, ProcfileLine]:
    out = {}
    for line in (PROJECT / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        out[name.strip()] = parse_procfile_command(command.strip())
    return out


def parse_procfile_command(command: str) -> ProcfileLine:
    parsed = ProcfileLine(argv=[])
    guard = _GUARD.match(command)
    if guard:
        parsed.guard = guard[1]
        command = command[guard.end():]
    prefix = _ENV_PREFIX.match(command)
    if prefix:
        for assignment in prefix[1].split():
            key, _, value = assignment.partition("=")
            parsed.env[key] = _DEFAULT.sub(lambda m: m[2], value)
        command = command[prefix.end():]

    def to_systemd(match: re.Match[str]) -> str:
        parsed.defaults[match[1]] = match[2]
        return "${" + match[1] + "}"

    parsed.argv = shlex.split(_DEFAULT.sub(to_systemd, command))
    return parsed


def read_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file -> section -> (key, value) in order; repeated keys (Environment=) are all kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    env = {}
    for line in values(unit, "Service", "Environment"):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


def exec_argv(line: str) -> list[str]:
    """An Exec line as systemd hands it to the program, with ``${VAR}`` left for comparison."""
    def specifier(match: re.Match[str]) -> str:
        return "%" if match[0] == "%%" else f"<systemd specifier {match[0]}>"

    return [re.sub(r"%.", specifier, word).replace("$$", "$") for word in shlex.split(line)]


def compare(name: str, proc: ProcfileLine, unit: dict[str, list[tuple[str, str]]]) -> list[str]:
    """What differs between a Procfile line and its unit; empty when they run the same thing."""
    problems = []
    exec_start = one(unit, "Service", "ExecStart")
    argv = exec_argv(exec_start)
    if not argv[0].startswith(VENV_BIN):
        problems.append(f"{name}: ExecStart runs {argv[0]}, not a program of {VENV_BIN}")
    if [Path(argv[0]).name, *argv[1:]] != proc.argv:
        problems.append(f"{name}: ExecStart {argv} != Procfile {proc.argv}")
    env = environment(unit)
    for var, default in {**proc.defaults, **proc.env}.items():
        if env.get(var) != default:
            problems.append(f"{name}: Environment={var}={default} expected (the Procfile's), got {env.get(var)!r}")
    for var in re.findall(r"\$\{(\w+)\}", " ".join(argv)):
        if var not in env:
            problems.append(f"{name}: ExecStart uses ${{{var}}} without an Environment= default")
    if re.search(r"(?<!\$)\$(?!\{|\$)\w", exec_start):
        problems.append(f"{name}: ExecStart uses an unbraced $VAR (systemd splits it into words)")
    if proc.guard:
        checks = [line for line in values(unit, "Service", "ExecStartPre") if f"$${{{proc.guard}}}" in line]
        if not checks:
            problems.append(f"{name}: no ExecStartPre= checks {proc.guard} as the Procfile's guard does")
        if re.search(rf"(?<!\$)\$\{{{proc.guard}\}}", exec_start + " ".join(values(unit, "Service", "ExecStartPre"))):
            problems.append(f"{name}: systemd would expand {proc.guard} into a command line")
    return problems


def secrets_in(text: str) -> list[str]:
    """Lines of a unit file that set or carry something secret-looking."""
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assignments = re.findall(r"(?:^|\s|=)(\w+)=(\S+)", line.partition("=")[2] if "=" in line else "")
        if any(_SECRET_NAME.search(key) and not _is_path_setting(key, value) for key, value in assignments):
            found.append(line)
        elif _URL_CREDENTIALS.search(line) or _SECRET_FLAG.search(line) or _LONG_TOKEN.search(line):
            found.append(line)
    return found


def _is_path_setting(key: str, value: str) -> bool:
    """``CONSOLE_SECRET_FILE=/var/lib/...`` names where a secret is kept, not the secret."""
    return key.endswith("_FILE") and value.startswith(("/", "var/"))


def unit_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(UNITS.iterdir()) if path.is_file()}


# -- the unit set is the Procfile ------------------------------------------------------------------------------


def test_every_procfile_process_has_a_unit_and_no_unit_is_extra() -> None:
    services = {name for name in unit_files() if name.endswith(".service")}
    assert services == {f"mailworker-{name}.service" for name in procfile()}
    assert TARGET in unit_files()


@pytest.mark.parametrize("name", sorted(procfile()))
def test_unit_runs_what_the_procfile_runs(name: str) -> None:
    unit = read_unit((UNITS / f"mailworker-{name}.service").read_text())
    assert compare(name, procfile()[name], unit) == []


@pytest.mark.parametrize(("unit", "edit", "problem"), [
    ("beat", ("--schedule ${BEAT_SCHEDULE_FILE}", "--schedule var/schedule"), "ExecStart"),
    ("beat", ("Environment=BEAT_SCHEDULE_FILE=var/celerybeat-schedule", "Environment=BEAT_SCHEDULE_FILE=var/other"),
     "BEAT_SCHEDULE_FILE=var/celerybeat-schedule"),
    ("worker", ("Environment=MALLOC_ARENA_MAX=2\n", ""), "MALLOC_ARENA_MAX=2"),
    ("worker", ("worker --loglevel INFO", "worker --lanes bulk --loglevel INFO"), "ExecStart"),
    ("beat", ("/opt/mailworker/venv/bin/celery", "/usr/bin/celery"), "not a program of"),
    ("beat", ("--loglevel INFO", "--loglevel INFO --hostname beat@%h"), "systemd specifier %h"),
])
def test_the_comparison_sees_a_unit_that_drifted(unit: str, edit: tuple[str, str], problem: str) -> None:
    """The normalisation is not so loose that a real difference passes."""
    text = (UNITS / f"mailworker-{unit}.service").read_text()
    assert edit[0] in text
    problems = compare(unit, procfile()[unit], read_unit(text.replace(edit[0], edit[1])))
    assert any(problem in p for p in problems), problems


def test_the_flower_guard_is_kept_without_putting_the_credentials_in_argv() -> None:
    text = (UNITS / "mailworker-flower.service").read_text()
    assert compare("flower", procfile()["flower"], read_unit(text)) == []
    leaky = text.replace("$${FLOWER_BASIC_AUTH}", "${FLOWER_BASIC_AUTH}")
    assert any("expand FLOWER_BASIC_AUTH" in p for p in compare("flower", procfile()["flower"], read_unit(leaky)))
    without = "\n".join(line for line in text.splitlines() if not line.startswith("ExecStartPre="))
    assert any("ExecStartPre" in p for p in compare("flower", procfile()["flower"], read_unit(without)))


# -- how the units run ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(procfile()))
def test_unit_runs_as_mailworker_with_the_environment_file_and_hardening(name: str) -> None:
    unit = read_unit((UNITS / f"mailworker-{name}.service").read_text())
    assert one(unit, "Service", "User") == "mailworker"
    assert one(unit, "Service", "EnvironmentFile") == "/etc/mailworker/env"  # no "-": a missing file fails
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}.items():
        assert one(unit, "Service", key) == value, key
    workdir = one(unit, "Service", "WorkingDirectory")
    assert one(unit, "Service", "ReadWritePaths") == f"{workdir}/var"  # var/ relative to the Procfile's cwd
    assert one(unit, "Unit", "PartOf") == TARGET
    assert one(unit, "Install", "WantedBy") == TARGET
    if name == "release":
        assert one(unit, "Service", "Type") == "oneshot"
        assert one(unit, "Service", "RemainAfterExit") == "yes"
        assert values(unit, "Unit", "Requires") == []
    else:
        assert RELEASE in one(unit, "Unit", "Requires").split()
        assert RELEASE in one(unit, "Unit", "After").split()
        assert one(unit, "Service", "Restart") == "always"


@pytest.mark.parametrize(("name", "var"), [("beat", "BEAT_SCHEDULE_FILE"), ("console", "CONSOLE_SECRET_FILE")])
def test_files_the_processes_write_are_in_the_writable_var(name: str, var: str) -> None:
    """ProtectSystem=strict leaves only var/ writable: the beat schedule and the console's generated key must
    be there (the console's default, next to the installed code, is read-only)."""
    unit = read_unit((UNITS / f"mailworker-{name}.service").read_text())
    path = Path(one(unit, "Service", "WorkingDirectory")) / environment(unit)[var]
    assert path.parent == Path(one(unit, "Service", "ReadWritePaths"))


# -- secrets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(unit_files()))
def test_no_unit_carries_a_secret(name: str) -> None:
    assert secrets_in(unit_files()[name]) == []


@pytest.mark.parametrize("line", [
    "Environment=SMTP2GO_API_KEY=api-0123456789",
    "Environment=DATABASE_URL=mysql+pymysql://mw:pw@db/mw",
    "Environment=A=1 CONSOLE_BASIC_AUTH=admin:pw",
    "ExecStart=/opt/mailworker/venv/bin/celery -A worker flower --basic-auth=admin:pw",
    "ExecStart=/opt/mailworker/venv/bin/celery -b redis://:hunter2@redis:6379/0 -A worker beat",
    "Environment=SETTINGS_ENCRYPTION_KEY=c2VjcmV0",
    "Environment=X=Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA==",
])
def test_the_secret_check_sees_secrets(line: str) -> None:
    assert secrets_in(f"[Service]\n{line}\n") == [line]


# -- systemd's own reading --------------------------------------------------------------------------------------


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """systemd parses every line (a typo is a warning it prints, not an error code, so any output fails).

    verify also requires each Exec program to exist; the copies point at this checkout's virtualenv instead of
    /opt/mailworker/venv, which changes nothing else.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    venv_bin = Path(sys.executable).parent
    for name, text in unit_files().items():
        (tmp_path / name).write_text(text.replace(VENV_BIN, f"{venv_bin}/"))
    files = sorted(str(path) for path in tmp_path.iterdir())
    result = subprocess.run([analyze, "verify", *files], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# -- docs/deployment.md ---------------------------------------------------------------------------------------


def wheel_top_level_names() -> set[str]:
    """What the wheel installs at the top of site-packages, from the packaging configuration."""
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in config["packages"]["find"]["include"]}
    return packages | set(config.get("py-modules", []))


def test_deployment_doc_names_what_the_wheel_installs() -> None:
    text = (PROJECT / "docs" / "deployment.md").read_text()
    paragraph = text.split("The wheel installs these top-level names:", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`(\w+)`", paragraph.split(".", 1)[0]))
    assert named == wheel_top_level_names()


def test_deployment_doc_names_every_unit() -> None:
    text = (PROJECT / "docs" / "deployment.md").read_text()
    assert {name for name in unit_files() if f"`{name}`" not in text} == set()
