"""What the figure tests check of a written figure: a non-empty file with PNG's signature."""

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return path.is_file() and path.stat().st_size > len(PNG) and path.read_bytes()[:8] == PNG
