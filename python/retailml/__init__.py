"""retailml: warehouse-centric analytics and ML for an online retailer."""

__version__ = "0.1.0"
