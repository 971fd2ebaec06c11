"""Paper reproductions: claims files, the sweeps that test them, statistics with bootstrap intervals, verdicts, reports (``harness reproduce``)."""
