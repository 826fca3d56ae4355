"""`python -m contracts.schemas`: regenerate the committed JSON Schema files."""

from . import write

for path in write():
    print(path)
