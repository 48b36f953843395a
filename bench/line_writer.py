"""The child of the log-capture benchmark: LINES lines of WIDTH bytes on stdout, as fast as Python can
write, each starting with its 10-digit sequence number so a reader can tell a line lost, cut or out of
order. `python bench/line_writer.py LINES WIDTH` (run as a script: it imports nothing of the project).

Lines go out in blocks of `PER_BLOCK`: one template with the block number left blank, filled by one
`bytes.replace` a block, so writing costs little more than the writes themselves.
"""

from __future__ import annotations

import sys

PER_BLOCK = 1000
BLANK = b"#######"  # the block number's 7 digits; the 3 digits of the line in the block follow
PREFIX = len(BLANK) + 3 + 1  # sequence number and a space


def template(width: int) -> bytes:
    padding = b"x" * (width - PREFIX - 1)
    return b"".join(BLANK + b"%03d " % line + padding + b"\n" for line in range(PER_BLOCK))


def block(blank: bytes, number: int) -> bytes:
    return blank.replace(BLANK, b"%07d" % number)


def expected(lines: int, width: int) -> bytes:
    """Everything the writer writes, for checking what was captured."""
    blank = template(width)
    return b"".join(block(blank, number) for number in range(lines // PER_BLOCK))


def main(argv: list[str]) -> int:
    lines, width = int(argv[0]), int(argv[1])
    if lines % PER_BLOCK or width <= PREFIX:
        print(f"LINES must be a multiple of {PER_BLOCK}, WIDTH more than {PREFIX}", file=sys.stderr)
        return 2
    blank = template(width)
    out = sys.stdout.buffer
    for number in range(lines // PER_BLOCK):
        out.write(block(blank, number))
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
