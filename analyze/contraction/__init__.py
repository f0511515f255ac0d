"""The contraction score a: float64 Gram moments per sequence block, the spectrum fit and its intervals."""
