"""Web2Code: rendering HTML in a real browser, the Web2Code data formats and a synthetic page corpus, WUB/WCGB
scoring and the Design2Code automatic metrics. See docs/web2code.md."""
