"""Shared fixtures: ``java_asap`` reads ASAP XML with Java's ``DocumentBuilder`` (as the QuPath extension does)."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

JAVA_READER = Path(__file__).resolve().parent / "java" / "ReadAsapXml.java"


class JavaXmlError(ValueError):
    """Java's ``DocumentBuilder`` refused the file (the message is its parse error)."""


@dataclass
class JavaAsap:
    """What ``tests/java/ReadAsapXml.java`` read: the root tag, the ``<Annotations>`` attributes, and per
    ``<Annotation>`` ``(Name, Type, PartOfGroup, [(x, y), ...])``."""

    root: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    annotations: list[tuple[str, str, str, list[tuple[float, float]]]] = field(default_factory=list)


def _java_major(java: str) -> int:
    r = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', r.stderr + r.stdout)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def _parse_output(text: str) -> JavaAsap:
    out, unq = JavaAsap(), urllib.parse.unquote_plus
    for line in text.splitlines():
        kind, *rest = line.split("\t")
        if kind == "ROOT":
            out.root = rest[0]
        elif kind == "ATTR":
            out.attrs[unq(rest[0])] = unq(rest[1])
        elif kind == "ANNOTATION":
            name, shape, group, n, points = rest
            xy = [tuple(float(v) for v in p.split(",")) for p in points.split()]
            assert len(xy) == int(n), line
            out.annotations.append((unq(name), unq(shape), unq(group), xy))
    return out


@pytest.fixture(scope="session")
def java_asap():
    """``read(path) -> JavaAsap``: the file parsed by Java's ``DocumentBuilder``; raises :class:`JavaXmlError`
    when Java refuses it. Skips without a Java 11+ ``java`` on PATH (single-file source programs)."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("no `java` on PATH: the ASAP XML is not checked with Java's DocumentBuilder (install a JRE 11+)")
    major = _java_major(java)
    if major < 11:
        pytest.skip(f"`java` is version {major or 'unknown'}: tests/java/ReadAsapXml.java needs Java 11+")

    def read(path: str | Path) -> JavaAsap:
        r = subprocess.run([java, str(JAVA_READER), str(path)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise JavaXmlError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
        return _parse_output(r.stdout)

    return read
