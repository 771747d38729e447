"""The classifier/triplet benchmark runs end to end at toy size (figures are not asserted)."""

from benchmarks.classifier_memory import main


def test_classifier_memory_benchmark_quick_run():
    report = main(["--quick", "--worlds", "2", "--rates", "1.0", "--losses", "softmax", "arcface"])
    assert "| 20,000 | 2 | 1 |" in report
    assert "| arcface | 20,000 | 2 | 1 |" in report
    assert "| all-gathered global batch |" in report
