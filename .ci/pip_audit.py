"""pip-audit over exactly what is installed in this virtualenv, with each accepted finding justified in
.ci/pip-audit-ignore.txt. Run by .ci/run with the virtualenv's Python.

Handled explicitly: vajra itself (installed editable from this checkout, not on PyPI) is not audited; a local
version label (torch's CPU build, 2.13.0+cpu) is audited as its public release, whose advisories it shares.

Exit 0: every package audited, no finding beyond the ignore file. 1: findings. 2: some or all packages could not
be audited (the vulnerability service unreachable, or a package it does not know): never reported as a pass.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OWN = {"vajra"}
IGNORE_FILE = Path(__file__).with_name("pip-audit-ignore.txt")
SERVICE = os.environ.get("PIP_AUDIT_SERVICE", "pypi")  # pypi (PyPI's JSON API) or osv


def ignored():
    """{vulnerability id: reason}; a line without a reason is refused, so none is accepted silently."""
    found = {}
    for number, line in enumerate(IGNORE_FILE.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        vuln_id, _, reason = line.partition(" ")
        if not reason.strip():
            sys.exit(f"{IGNORE_FILE}:{number}: {vuln_id} has no reason; write why it is accepted.")
        found[vuln_id] = reason.strip()
    return found


def requirements():
    pins, notes = {}, []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in OWN:
            notes.append(f"{name} {dist.version}: this project, not audited")
            continue
        version = dist.version
        if "+" in version:
            version = version.split("+", 1)[0]
            notes.append(f"{name} {dist.version}: audited as {version} (a local build of that release)")
        pins[name] = version
    return pins, notes


def main():
    accepted = ignored()
    pins, notes = requirements()
    with tempfile.TemporaryDirectory() as tmp:
        reqs, report = Path(tmp) / "requirements.txt", Path(tmp) / "report.json"
        reqs.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        command = [sys.executable, "-m", "pip_audit", "-r", str(reqs), "--no-deps", "--disable-pip",
                   "--vulnerability-service", SERVICE, "--progress-spinner", "off", "--format", "json",
                   "--output", str(report)]
        for vuln_id in accepted:
            command += ["--ignore-vuln", vuln_id]
        run = subprocess.run(command, capture_output=True, text=True)
        if not report.exists():  # it could not even start: e.g. the service's host does not resolve
            print(run.stdout, run.stderr[-3000:], sep="\n")
            print(f"pip-audit: NOTHING WAS AUDITED: pip-audit against '{SERVICE}' failed (exit {run.returncode}) "
                  "before it could report. This is not a pass.")
            return 2
        result = json.loads(report.read_text())
    for note in notes:
        print(f"pip-audit: {note}")
    dependencies = result["dependencies"]
    skipped = [d for d in dependencies if "skip_reason" in d]
    findings = [(d["name"], d["version"], v) for d in dependencies for v in d.get("vulns", [])]
    for vuln_id, reason in accepted.items():
        print(f"pip-audit: accepted {vuln_id}: {reason}")
    for name, version, vuln in findings:
        fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
        print(f"pip-audit: FINDING {name} {version}: {vuln['id']} (fixed in {fixes})")
    audited = len(dependencies) - len(skipped)
    print(f"pip-audit: {audited} of {len(dependencies)} packages audited against {SERVICE}, "
          f"{len(findings)} finding(s) beyond the {len(accepted)} accepted.")
    if findings:
        return 1
    if skipped:
        banner = "!" * 100
        print(banner)
        if audited == 0:
            print(f"pip-audit: NOTHING WAS AUDITED: the '{SERVICE}' vulnerability service answered for none of "
                  f"the {len(dependencies)} packages (unreachable from here?). This is not a pass.")
        for dep in skipped:
            print(f"pip-audit: NOT AUDITED {dep['skip_reason']}")
        print(banner)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
