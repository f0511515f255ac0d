"""What a reader sees: the verdict sentences, the figures, the tables and the self-contained HTML report."""
