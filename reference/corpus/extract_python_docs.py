"""Extract the prose paragraphs of CPython's bundled language-reference topics into python_docs.txt.

Source: `pydoc_data.topics` of CPython 3.11.7 (the text behind `help("if")`), generated from the
Python documentation and distributed under the PSF License Agreement (LICENSE-PSF.txt beside this
file). Indented blocks (grammar productions, code examples) and headings are dropped; paragraphs
shorter than 80 characters are dropped. Run once with the interpreter whose docs you want:

    python reference/corpus/extract_python_docs.py > reference/corpus/python_docs.txt
"""

import re
import sys

import pydoc_data.topics as topics

HEADING_CHARS = set("*=-~^")


def paragraphs() -> list[str]:
    out = []
    for key in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[key]):
            lines = block.split("\n")
            if any(line.startswith(" ") for line in lines):  # grammar or code: not prose
                continue
            kept = [line.strip() for line in lines if not set(line.strip()) <= HEADING_CHARS]
            if len(kept) <= 1 and len(lines) == 2:  # a title and its underline
                continue
            text = " ".join(kept)
            if len(text) >= 80:  # short leftovers are captions and fragments
                out.append(text)
    return out


if __name__ == "__main__":
    sys.stdout.write("\n\n".join(paragraphs()) + "\n")
