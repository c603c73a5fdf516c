"""Rendezvous (HRW) routing; a leaf package with no project imports."""

from routing.hrw import partition_of, rank, score, winner

__all__ = ["partition_of", "rank", "score", "winner"]
