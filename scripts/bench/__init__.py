"""The performance suite behind `make bench`: modalbench against the tools researchers would
use instead, side by side on one machine."""
