"""Run the whole suite (trial over cas, then tests/) and end with a plain ``N passed, M failed`` line.

Fails when no test ran: trial itself says PASSED for zero tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(suite: str) -> tuple[int, int, int]:
    """Run trial on ``suite``; returns (ran, failed, skipped)."""
    cmd = [sys.executable, "-m", "twisted.trial", "--temp-directory", f"_trial_temp.{suite}", suite]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line)
        tail = tail[-50:]
    code = proc.wait()
    text = "".join(tail)
    m = re.search(r"^Ran (\d+) tests? in", text, re.M)
    ran = int(m.group(1)) if m else 0
    failed = skipped = 0
    verdict = re.search(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.M)
    if verdict:
        for key, value in re.findall(r"(\w+)=(\d+)", verdict.group(2)):
            if key in ("failures", "errors", "unexpectedSuccesses"):
                failed += int(value)
            elif key in ("skips", "expectedFailures"):
                skipped += int(value)
    if code != 0 and failed == 0:
        failed = 1  # trial failed without counting (import error, crash)
    return ran, failed, skipped


def main() -> int:
    suites = ["cas"]
    if os.path.isdir(os.path.join(ROOT, "tests")) and any(
        n.startswith("test_") and n.endswith(".py") for n in os.listdir(os.path.join(ROOT, "tests"))
    ):
        suites.append("tests")
    ran = failed = skipped = 0
    for suite in suites:
        r, f, s = run(suite)
        ran += r
        failed += f
        skipped += s
    if ran == 0:
        print("no test ran")
        failed = max(failed, 1)
    passed = max(0, ran - failed - skipped)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
