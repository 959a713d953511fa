"""The benchmark scripts' markdown tables: the library's one formatter
(:func:`lmsolvers.markdown.markdown_table`), so escaping and the header rule are the same
in every report."""

from lmsolvers.markdown import markdown_table

__all__ = ["markdown_table"]
