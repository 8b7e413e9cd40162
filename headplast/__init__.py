"""headplast: does how much an attention head matters predict how much fine-tuning changes it?"""

__version__ = "0.1.0"
