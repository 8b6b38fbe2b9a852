#!/usr/bin/env python3
"""A corpus of real English from Debian's documentation packages, as reatt's JSONL.

    apt-get install debian-handbook debian-reference-en debian-policy developers-reference
    python3 scripts/corpus/debian_docs.py data/debian-docs.jsonl

Every English HTML page of the Debian Administrator's Handbook (debian-handbook, en-US), the
Debian Reference (debian-reference-en), the Debian Policy Manual (debian-policy) and the
Developer's Reference (developers-reference) becomes one ``{"id": ..., "text": ...}`` line: its visible
text, block by block (paragraphs, headings, list items, table cells, preformatted text), without
navigation, scripts or styles. Pages come in sorted order, so one package version gives one file
byte for byte. The file is data, not code: keep it out of the repository (a few MB).

The standard library's html.parser is enough here (pages are well-formed DocBook output); a full
HTML library would be one more dependency for one script.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

SOURCES = (  # (package, directory, pattern); each package's pages split by chapter, no duplicates
    ("debian-handbook", Path("/usr/share/doc/debian-handbook/html/en-US"), "*.html"),
    ("debian-reference", Path("/usr/share/debian-reference"), "*.en.html"),
    ("debian-policy", Path("/usr/share/doc/debian-policy/policy.html"), "*.html"),
    ("developers-reference", Path("/usr/share/developers-reference"), "*.html"),
)
# single-page copies of the split pages, and pages of links only
LEFT_OUT = {"developers-reference.html", "index.html", "search.html", "genindex.html"}
BLOCKS = {
    "p",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "dt",
    "dd",
    "tr",
    "pre",
    "br",
    "table",
    "section",
}
SKIPPED = {"script", "style", "head", "nav"}
NAV_CLASSES = ("navheader", "navfooter", "toc", "breadcrumbs", "docnav", "sphinxsidebar", "related", "footer")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.skip_depth = 0  # inside a skipped element (or a navigation block)
        self.stack: list[tuple[str, bool]] = []
        self.pre = 0

    def _flush(self) -> None:
        text = "".join(self.current)
        text = text if self.pre else re.sub(r"\s+", " ", text)
        text = text.strip("\n") if self.pre else text.strip()
        if text:
            self.blocks.append(text)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "img", "meta", "link", "hr", "input"):
            if tag == "br":
                self._flush()
            return
        cls = dict(attrs).get("class") or ""
        skip = tag in SKIPPED or any(c in cls.split() for c in NAV_CLASSES)
        self.stack.append((tag, skip))
        if skip:
            self.skip_depth += 1
        if tag in BLOCKS:
            self._flush()
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, skip = self.stack.pop()
            if skip:
                self.skip_depth -= 1
            if open_tag in BLOCKS:
                self._flush()
            if open_tag == "pre":
                self.pre -= 1
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.current.append(data)


def page_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    parser._flush()
    return "\n\n".join(parser.blocks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the JSONL file to write")
    ap.add_argument("--min-chars", type=int, default=200, help="leave out pages shorter than this")
    args = ap.parse_args(argv)
    found = [(name, root, pattern) for name, root, pattern in SOURCES if root.is_dir()]
    if not found:
        print(
            "error: no Debian documentation found; apt-get install debian-handbook debian-reference-en",
            file=sys.stderr,
        )
        return 1
    n_docs = n_chars = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for name, root, pattern in found:
            for page in sorted(root.glob(pattern)):
                if page.name in LEFT_OUT:
                    continue
                text = page_text(page.read_text(encoding="utf-8", errors="replace"))
                if len(text) < args.min_chars:
                    continue
                out.write(json.dumps({"id": f"{name}:{page.name}", "text": text}, ensure_ascii=False) + "\n")
                n_docs += 1
                n_chars += len(text)
    tmp.replace(args.out)
    print(
        f"wrote {args.out}: {n_docs} documents, {n_chars / 1e6:.1f} M characters from "
        f"{', '.join(name for name, _, _ in found)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
