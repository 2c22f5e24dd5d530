"""Figures and the demo report: the figure convention and its builders (``viz``), the report's building
blocks (``report``), one section per method family (``demo_sections``) and the page (``demo``).
"""
