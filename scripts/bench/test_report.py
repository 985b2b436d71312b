"""Unit tests of bench.report: the table's format and the docs block that --write-docs puts between the markers.

    PYTHONPATH=scripts python3 -m unittest bench.test_report     (scripts/bench-smoke runs it)
"""

import os
import tempfile
import unittest

from bench import report

ROWS = [
    {"target": "redis-server", "tool": "redis-benchmark", "op": "get", "rps": 91234.5, "mbps": 93.4,
     "p50_ms": 0.271, "p99_ms": 0.5, "runs": 3, "check": "reference"},
    {"target": "memory", "tool": "h2load", "op": "set", "rps": 40000.0, "mbps": 41.0, "p50_ms": 1.1,
     "p99_ms": float("nan"), "runs": 8, "thr_ratio_text": "0.93", "p99_ratio_text": "1.10",
     "check": "ok (>= 0.85x, p99 <= 1.5x)"},
]


class TableTest(unittest.TestCase):
    def test_columns_aligned_numbers_right_missing_as_dash(self):
        self.assertEqual(report.table(ROWS).splitlines(), [
            "| target       | tool            | op  |  req/s | MB/s | p50 ms | p99 ms | thr ratio | p99 ratio | runs | check                      |",
            "|--------------|-----------------|-----|-------:|-----:|-------:|-------:|----------:|----------:|-----:|----------------------------|",
            "| redis-server | redis-benchmark | get | 91,234 | 93.4 |   0.27 |   0.50 |         - |         - |    3 | reference                  |",
            "| memory       | h2load          | set | 40,000 | 41.0 |   1.10 |      - |      0.93 |      1.10 |    8 | ok (>= 0.85x, p99 <= 1.5x) |",
        ])


class WriteDocsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "benchmarks.md")

    def tearDown(self):
        self.dir.cleanup()

    def write(self, text):
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def read(self):
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def test_replaces_only_the_text_between_the_markers(self):
        self.write(f"# Benchmarks\n\nintro\n\n{report.START_MARKER}\nold table\n{report.END_MARKER}\n\nafter\n")
        floors = [("get >= 0.90x", True, "0.95x"), ("set >= 0.85x", False, "0.80x")]
        block = report.docs_block(ROWS, ["Start to SERVING: 12 ms"], "params line", 0.5, 1.5, floors)
        report.write_docs(self.path, block)
        text = self.read()
        self.assertTrue(text.startswith(f"# Benchmarks\n\nintro\n\n{report.START_MARKER}\n"))
        self.assertTrue(text.endswith(f"{report.END_MARKER}\n\nafter\n"))
        self.assertNotIn("old table", text)
        self.assertIn(report.table(ROWS), text)
        self.assertIn("Command: `scripts/bench-compare", text)
        self.assertIn("load average 0.50 at the start, 1.50 at the end", text)
        self.assertIn("- Start to SERVING: 12 ms\n- Floors: 1 of 2 met; missed: set >= 0.85x (0.80x)\n", text)
        report.write_docs(self.path, "second")
        self.assertEqual(self.read(), f"# Benchmarks\n\nintro\n\n{report.START_MARKER}\nsecond\n"
                                      f"{report.END_MARKER}\n\nafter\n", "a second run replaces the first")

    def test_missing_file_is_an_error_naming_the_markers(self):
        with self.assertRaisesRegex(ValueError, "does not exist.*bench-table:start"):
            report.check_docs(self.path)

    def test_missing_duplicated_or_reversed_markers_are_errors(self):
        for text, message in (("no markers\n", "once each"),
                              (f"{report.START_MARKER}\n{report.START_MARKER}\n{report.END_MARKER}\n", "once each"),
                              (f"{report.END_MARKER}\nx\n{report.START_MARKER}\n", "comes before")):
            self.write(text)
            with self.assertRaisesRegex(ValueError, message):
                report.write_docs(self.path, "table")
            self.assertEqual(self.read(), text, "the file is left alone")


if __name__ == "__main__":
    unittest.main()
