"""Demo: a small generated crawl (WARC + WAT) run through extract and dedupe, with a printed report."""
