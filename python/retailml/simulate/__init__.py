"""The seeded simulator of the online retailer.

It writes what production systems would write (order exports to S3, customer and product
documents to MongoDB) and, apart from them, the ground truth used only for evaluation.

What readers of its output can rely on (beyond docs/ARCHITECTURE.md):

- ``orders/dt=D/part-NNNN.{parquet,jsonl.gz}``: every line of partition ``D`` has
  ``ordered_at`` on local date ``D``; a day with no lines still gets one (empty) object.
  ``exported_at`` is ``D + 1`` 04:00 local plus one minute per part. Order ids grow with
  ``ordered_at``. Duplicates are exact copies of a whole line, so ``(order_id, line_number)``
  is unique after removing them.
- A return is an order of its own: all its lines have negative quantity, the price paid and
  no discount, no shipping line. A purchase order has only positive quantities. Returns can
  arrive after the customer has (latently) churned.
- MongoDB ``created_at`` / ``updated_at`` are UTC BSON dates (whole seconds); every change
  replaces the whole document and moves ``updated_at`` to the time of the change, within
  the simulated day. The first call inserts the business as it stood (backdated dates).
- Churn truth (``truth/churn_truth/*.parquet``): for each Monday ``cutoff_date`` and every
  customer who signed up before that (local) date, ``p_no_order`` = P(no purchase order with local
  ``ordered_at`` date in ``[cutoff_date, cutoff_date + horizon_days)``) given the latent
  state at the start of ``cutoff_date``; 1.0 where ``is_latent_churned``.
- Demand truth (``truth/demand_truth/*.parquet``): per ``(category, order_date)`` the expected
  product units sold (guests included; returns, shipping and duplicates excluded) and their
  revenue at list price before discounts, given the state at the start of the day.
"""

from retailml.simulate.config import SimulationConfig, SimulationSummary
from retailml.simulate.engine import simulate_days
from retailml.simulate.state import StateMismatchError, saved_config

__all__ = [
    "SimulationConfig",
    "SimulationSummary",
    "StateMismatchError",
    "saved_config",
    "simulate_days",
]
