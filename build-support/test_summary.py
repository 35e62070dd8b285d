"""Sum Pants' JUnit reports into one closing line: ``N passed, N failed, N skipped``."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(report_dir: str, runner_rc: int = 0) -> int:
    """``runner_rc``: the test runner's exit status. A batch that fails before pytest writes its
    report (a conftest that does not import) leaves no XML: it counts as one failure, not as nothing."""
    files = sorted(Path(report_dir).rglob("*.xml"))
    total = failed = skipped = 0
    for f in files:
        for suite in ET.parse(f).getroot().iter("testsuite"):
            total += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    passed = total - failed - skipped
    if runner_rc != 0 and failed == 0:
        failed = 1
        print(f"the test runner failed (exit status {runner_rc}) with no failing test in its reports: a batch failed before it could report (see above)")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if files and failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dist/test/reports", int(sys.argv[2]) if len(sys.argv) > 2 else 0))
