"""What is sold: the catalog and supply-and-demand pricing."""
